# imds-probe %postun: rpm has no purge, so the events in /var/log/imds-probe and the state in
# /var/lib/imds-probe stay after removal (they are the evidence an operator may still need);
# remove them by hand.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
