# Step timing for .ci/run and the test scripts it calls. Source it, then run each step as
#
#   step NAME COMMAND [ARGS...]
#
# Each finished step appends "NAME<TAB>SECONDS" to $ELX_CI_STEPS. The first script that
# sources this file in a process tree owns the table: it creates the file and prints the table
# with a total when it exits, with the step that was running marked FAILED if one failed.
# Scripts it calls (tools/test.sh from .ci/run) inherit ELX_CI_STEPS and add their rows; two
# scripts may run side by side (.ci/run's aarch64 lane): each marks its running step in its
# own file, and the report names every step still running.

if [ -z "${ELX_CI_STEPS:-}" ]; then
  ELX_CI_STEPS=$(mktemp /tmp/elx-ci-steps.XXXXXX)
  export ELX_CI_STEPS
  _elx_steps_t0=$(date +%s)
  _elx_steps_report() {
    local rc=$? name secs
    {
      printf 'ci: %-44s %8s\n' step seconds
      while IFS=$'\t' read -r name secs; do
        printf 'ci: %-44s %8s\n' "$name" "$secs"
      done <"$ELX_CI_STEPS"
      local running
      for running in "$ELX_CI_STEPS".running.*; do
        [ -f "$running" ] || continue
        IFS=$'\t' read -r name secs <"$running"
        printf 'ci: %-44s %8s  FAILED or stopped (exit %s)\n' "$name" "$(($(date +%s) - secs))" "$rc"
      done
      printf 'ci: %-44s %8s\n' total "$(($(date +%s) - _elx_steps_t0))"
      # A full disk fails a step with "No space left on device": say how close it was.
      printf 'ci: disk free at the end: %s (target/: %s)\n' \
        "$(df -h --output=avail . 2>/dev/null | tail -n 1 | tr -d ' ')" \
        "$(du -sh target 2>/dev/null | cut -f1)"
    } >&2
    rm -f "$ELX_CI_STEPS" "$ELX_CI_STEPS".running.*
    return "$rc"
  }
  trap _elx_steps_report EXIT
fi

step() {
  local name=$1 t0
  shift
  t0=$(date +%s)
  printf '%s\t%s\n' "$name" "$t0" >"$ELX_CI_STEPS.running.$$"
  echo "== step: $name" >&2
  "$@"
  rm -f "$ELX_CI_STEPS.running.$$"
  printf '%s\t%s\n' "$name" "$(($(date +%s) - t0))" >>"$ELX_CI_STEPS"
}

# The suite's one build (tools/test.sh builds and runs it; tools/test-capi.sh asks the same
# build where libelx is, compiling nothing). The examples are built in it too: linked, they
# take 631 MB of disk, but checking them apart (`cargo check --examples`) cost 200 s of CI.
suite_targets=(--workspace --all-targets --features ort)
