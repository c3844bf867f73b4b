#!/bin/sh
# run_in_empty_dir.sh DIR COMMAND...: runs COMMAND in DIR, made empty first, and fails when
# COMMAND leaves anything there: every CTest test runs through it, so no test can leave
# files in its working directory (scripts/test.sh checks the source tree the same way).
dir=$1
shift
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir" || exit 1
"$@"
rc=$?
left=$(ls -A)
if [ -n "$left" ]; then
  echo "error: the test left files in its working directory $dir:" >&2
  echo "$left" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
exit $rc
