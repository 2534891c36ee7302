#!/usr/bin/env bash
# Speech quality through the voice-bot leg, scored with PESQ (issue 15; BENCHMARKS.md
# "Voice bot: speech quality"). Not part of scripts/test.sh: pesq builds from source and the
# run takes about a minute. Installs what it needs on a fresh Debian machine:
# espeak-ng (apt), numpy + pesq + websockets (pip).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
if ! command -v espeak-ng >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 \
         && $sudo apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null; }
fi
python3 -c 'import numpy, pesq, websockets' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
       numpy==2.4.6 pesq==0.0.4 websockets==17.4

cargo test -p e2e --test voice_bot_quality -- --ignored --nocapture
