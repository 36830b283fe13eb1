# Build/boot/test harness for the AF_VSOCK network-namespace series.
# See README.md.  Everything real lives in scripts/.

PROFILE ?= default
SHELL := /bin/bash

.PHONY: help deps tree export kernel check vm demo lint bench check-debug fuzz check-guests

help:
	@echo "make demo          the article's walkthrough on our kernel, VMs included"
	@echo "make check         install, build and run every test (last line: N passed, N failed, N skipped)"
	@echo "make deps          install the Debian packages"
	@echo "make tree          build/linux = Debian's linux-source-6.12 + patches/"
	@echo "make export        patches/ <- the commits of build/linux"
	@echo "make kernel PROFILE=p   build one kernel: default baseline debug modules"
	@echo "                   guest guest-debug perf baseline-perf baseline-debug"
	@echo "make vm [PROFILE=p] a root shell in a VM running that kernel"
	@echo "make lint          checkpatch, bisect builds and boots, config corners"
	@echo "make bench         benchmarks, ours against the unpatched base"
	@echo "make check-debug   every suite on the KASAN/lockdep kernel, fuzz, debug guest"
	@echo "make check-guests  only the real nested-guest suite"
	@echo "make fuzz          trinity against AF_VSOCK in every kind of netns"
	@echo "README.md tells more."

deps:
	scripts/install-deps

tree:
	scripts/make-tree

export:
	scripts/export-series

kernel:
	scripts/build-kernel $(PROFILE)

# deps + tree (if missing) + kernel + one boot running every suite
check:
	CHECK_PROFILE=$(PROFILE) scripts/run-check

vm:
	scripts/vm-run --profile $(PROFILE) --interactive --timeout 86400 -- bash

demo:
	scripts/demo

lint:
	scripts/lint

bench:
	scripts/bench

# every suite of make check on the debug kernel (KASAN, kmemleak, lockdep),
# the churn test at 10,000 rounds, a kmemleak scan at the end, four minutes
# of make fuzz, then a guest-debug nested guest (tests/guests/guests-debug.sh)
check-debug:
	scripts/check-debug

# real nested guests on the other side of vhost-vsock (tests/guests/guests.sh)
check-guests:
	scripts/check-guests

# trinity against AF_VSOCK in every kind of netns on the debug kernel
# (FUZZ_MINUTES, default 30; FUZZ_PROFILE=baseline-debug: the unpatched
# base); see scripts/fuzz
fuzz:
	scripts/fuzz
