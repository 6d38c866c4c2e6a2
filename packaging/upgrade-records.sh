#!/bin/sh
# Run by the .deb's postinst and the rpm's %post on an upgrade: gives each app that runs behind
# the agent the render record 0.2.0 reads. Up to 0.1.0 the agent kept the record of a render
# (state.json: parameter names and versions, never a value) in the app's runtime folder,
# /run/secrets-agent/NAME/; from 0.2.0 on it lives apart, in /run/secrets-agent-state/NAME/, which
# the app can never own. An app that already runs keeps its agent unit as it started, so its record
# stays where 0.1.0 wrote it until the app restarts: without this copy its refresh timer and
# `secrets-agent status` would find no record. A record is copied only when root alone could have
# written it (a root-owned folder writable by no one else, a root-owned regular file, no symlink);
# the next start of the app records its render in the new place anyway. Nothing else is touched.
set -eu
old=/run/secrets-agent
new=/run/secrets-agent-state
[ -d "$old" ] || exit 0
umask 077
for folder in "$old"/*/; do
    folder=${folder%/}
    name=${folder##*/}
    record="$folder/state.json"
    if [ ! -d "$folder" ] || [ -L "$folder" ] || [ ! -f "$record" ] || [ -L "$record" ]; then continue; fi
    if [ -e "$new/$name/state.json" ]; then continue; fi
    if [ "$(stat -c %u "$folder")" != 0 ] || [ "$(stat -c %u "$record")" != 0 ]; then continue; fi
    # Writable by its group or by others: someone but root could have put the record there.
    case $(stat -c %a "$folder") in *[2367]? | *[2367]) continue ;; esac
    [ -d "$new" ] || mkdir -m 0755 "$new"
    [ -d "$new/$name" ] || mkdir -m 0700 "$new/$name"
    cat "$record" >"$new/$name/state.json.new"
    mv "$new/$name/state.json.new" "$new/$name/state.json"
    echo "secrets-agent: $name's render record moved to $new/$name/ (0.2.0 keeps it apart from the app's folder)"
done
