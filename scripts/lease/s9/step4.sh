# step 4: the data; then `bash ci/run.sh` with no arguments in the background (it picks cuda itself)
set -e; . scripts/lease/s9/env.sh
cp .carry/d1/* .carry/d2/* /tmp/data/; ls /tmp/data
rm -f /tmp/ci.rc; date -u +%FT%TZ > /tmp/ci.start
setsid nohup bash -c '. scripts/lease/s9/env.sh; bash ci/run.sh > /tmp/ci.log 2>&1; echo $? > /tmp/ci.rc; date -u +%FT%TZ > /tmp/ci.end' \
  > /tmp/ci.outer 2>&1 < /dev/null &
sleep 20; progress
