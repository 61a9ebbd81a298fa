# poll: wait up to $1 seconds for ci/run.sh to finish, then pack what it wrote so far
. scripts/lease/s9/env.sh
t=0; while [ ! -e /tmp/ci.rc ] && [ $t -lt "$1" ]; do sleep 10; t=$((t + 10)); done
progress; cat /tmp/ci.start /tmp/ci.end 2>/dev/null; tail -n 25 /tmp/ci.outer; pack
