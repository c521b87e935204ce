# imds-probe %post: $1 is 1 on install, 2 on upgrade. The directories it writes to; enable and
# start on install, restart on upgrade (the old daemon runs until the new one replaces it).
install -d -m 0750 /var/log/imds-probe /var/lib/imds-probe
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$1" -eq 1 ]; then
        systemctl enable --now imds-probe.service
    else
        systemctl try-restart imds-probe.service
    fi
else
    # No running systemd (an image being built): enable for the next boot only.
    systemctl enable imds-probe.service
fi
