# imds-probe %preun: $1 is 0 on removal, 1 when an upgrade removes the old version (then the
# unit keeps running and %post restarts it).
if [ "$1" -eq 0 ]; then
    systemctl disable --now imds-probe.service || true
fi
