import sys

from echo_core.cli import main

sys.exit(main())
