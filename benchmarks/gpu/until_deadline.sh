# Sourced by the GPU scripts. `until_deadline END CMD...` runs CMD (a `presetdb refine` or
# `tune` with --shape-hard-limit) until it exits with anything but 4, or END (epoch
# seconds) passes; Ctrl-C (SIGINT) at END, so the results file keeps what finished. Exit 4
# means a shape outlasted the hard limit (a compile that hangs: a softmax key over 152,064
# columns ran past 6 min on the H100) and was recorded as abandoned: the rerun resumes
# with the next shape.
until_deadline() {
  local end=$1 rc=4 left; shift
  while [ "$rc" -eq 4 ]; do
    left=$(( end - $(date +%s) ))
    [ "$left" -le 5 ] && { rc=124; break; }
    timeout -s INT "$left" "$@"; rc=$?
    [ "$rc" -eq 4 ] && echo "(a shape outlasted --shape-hard-limit; resuming)"
  done
  return "$rc"
}
