# Sourced by the prepare scripts: find_host_tarball NAME prints the absolute path of the tarball NAME from
# ../shared/hosts (beside the checkout, or one level up for a worktree), shared/hosts, or $ECHO_HOSTS_DIR.
# Needs $ROOT (the repository root); returns 1 when no folder holds it.
find_host_tarball() {
    local name="$1" d
    for d in "${ECHO_HOSTS_DIR:-}" "$ROOT/../shared/hosts" "$ROOT/../../shared/hosts" "$ROOT/shared/hosts"; do
        if [ -n "$d" ] && [ -f "$d/$name" ]; then
            echo "$(cd "$d" && pwd)/$name"
            return 0
        fi
    done
    return 1
}
