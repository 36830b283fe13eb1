# Build/boot/test harness for the AF_VSOCK network-namespace series.
# See README.md.  Everything real lives in scripts/.

PROFILE ?= default
SHELL := /bin/bash

.PHONY: help deps tree export kernel check vm demo lint bench check-debug fuzz check-guests

help:
	@echo "targets: deps tree export kernel [PROFILE=default|baseline|debug|modules|guest|guest-debug|perf|baseline-perf|baseline-debug]"
	@echo "         check vm [PROFILE=...] demo lint bench check-debug fuzz check-guests"

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

define not_yet
	@if [ -x scripts/$(1) ]; then scripts/$(1); else \
		echo "make $@: not implemented yet (scripts/$(1) does not exist)" >&2; exit 1; fi
endef

demo:
	$(call not_yet,demo)

lint:
	$(call not_yet,lint)

bench:
	$(call not_yet,bench)

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
