# The module runs core's heap self-test (core/src/selftest.rs: ordered map,
# vmalloc-sized buffer, Arc, try_reserve failure) when it loads, through the
# module's own alloc crate and kvmalloc bridge. This test loads the module and
# checks the kernel log for the result.
# Convention with linux/: on load the module prints one line containing
# "selftest" and "ok"/"passed" on success, or "selftest" and "FAIL"/"failed" on
# failure (and then refuses to load).
# shellcheck shell=sh
# shellcheck source=qemu/guest/lib.sh
. /mlsdisk/lib.sh

need_module
n0=$(dmesg | wc -l)
load_module
new=$(dmesg | tail -n +$((n0 + 1)))
echo "$new" | sed 's/^/    dmesg: /'
lines=$(echo "$new" | grep -i selftest || true)
[ -n "$lines" ] || fail "no selftest line in the kernel log after insmod"
if echo "$lines" | grep -qE 'FAIL|[Ff]ailed|mismatch'; then
	fail "core selftest failed in the kernel: $(echo "$lines" | head -n 1)"
fi
echo "$lines" | grep -qiE '(^|[^a-z])(ok|passed)([^a-z]|$)' || fail "selftest line does not say ok/passed: $(echo "$lines" | head -n 1)"
unload_module
