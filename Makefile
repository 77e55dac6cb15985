# pogo - the only entry point: build, test, run, bench, install.
#
#   make            build ./pogo
#   make test       install missing packages, build, run every test
#   make run        start the demo from examples/ in the foreground
#   make asan       build build/asan/pogo with ASan + UBSan
#   make bench      run the benchmarks in bench/
#   make deps       install missing Debian packages (apt-get)

PREFIX  ?= /usr/local
CC      ?= cc

# Debian packages the project needs to build, test and run.
DEB_PKGS := build-essential pkg-config liblua5.4-dev lua5.4 libev-dev \
            lua-lpeg lua-busted lua-cjson libsodium-dev libmsgpack-dev \
            libedit-dev iproute2 procps psmisc socat nftables tmux \
            clang libclang-rt-14-dev lua-check

PC_PKGS  := lua5.4 msgpack libsodium libedit
PC_CFLAGS = $(shell pkg-config --cflags $(PC_PKGS))
PC_LIBS   = $(shell pkg-config --libs $(PC_PKGS))

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(PC_CFLAGS) \
             -DPOGO_PREFIX='"$(PREFIX)"' -MMD -MP
LDLIBS  = $(PC_LIBS) -lev -lm

ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
              -fno-sanitize-recover=undefined -DPOGO_DEBUG

SRCS     := $(wildcard src/*.c)
CORE     := $(filter-out src/main.c,$(SRCS))
UNIT     := $(wildcard tests/unit/*.c)

OBJS       := $(SRCS:src/%.c=build/obj/%.o)
CORE_OBJS  := $(CORE:src/%.c=build/obj/%.o)
UNIT_OBJS  := $(UNIT:tests/unit/%.c=build/obj/unit/%.o)
AOBJS      := $(SRCS:src/%.c=build/asan/obj/%.o)
ACORE_OBJS := $(CORE:src/%.c=build/asan/obj/%.o)
AUNIT_OBJS := $(UNIT:tests/unit/%.c=build/asan/obj/unit/%.o)

.PHONY: all deps asan unit test check run bench clean install fuzz chaos

all: pogo

pogo: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

build/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

build/obj/unit/%.o: tests/unit/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Isrc -c -o $@ $<

build/unit: $(CORE_OBJS) $(UNIT_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The sanitizer build: same sources, own objects, same tests.
asan: build/asan/pogo build/asan/unit

build/asan/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) -c -o $@ $<

build/asan/obj/unit/%.o: tests/unit/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) -Isrc -c -o $@ $<

build/asan/pogo: $(AOBJS)
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

build/asan/unit: $(ACORE_OBJS) $(AUNIT_OBJS)
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

unit: build/unit

# Small programs the end-to-end tests run as children.
build/helpers/%: tests/helpers/%.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 -o $@ $<

HELPERS := $(patsubst tests/helpers/%.c,build/helpers/%,$(wildcard tests/helpers/*.c))

# libFuzzer targets (clang): every decoder of outside input.
FUZZ_SRCS    := $(wildcard tests/fuzz/*.c)
FUZZ_TARGETS := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)
FUZZ_FLAGS   := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_TIME    ?= 60

FUZZ_OBJS    := $(CORE:src/%.c=build/fuzz/obj/%.o)

# The core is instrumented once and linked into every target (kept, not
# deleted as intermediate files).
.SECONDARY: $(FUZZ_OBJS)
build/fuzz/obj/%.o: src/%.c src/pogo.h
	@mkdir -p $(@D)
	clang -std=c11 -D_GNU_SOURCE $(FUZZ_FLAGS) $(PC_CFLAGS) -c -o $@ $<

build/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz_lua.h $(FUZZ_OBJS)
	@mkdir -p $(@D)
	clang -std=c11 -D_GNU_SOURCE $(FUZZ_FLAGS) -DFUZZ_ROOT='"$(CURDIR)"' -Isrc $(PC_CFLAGS) -o $@ $< $(FUZZ_OBJS) $(LDLIBS)

fuzz-build: $(FUZZ_TARGETS)

# make fuzz: each target for FUZZ_TIME seconds from its seed corpus.
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@tests/fuzz/run $(FUZZ_TIME)

# make chaos: a seeded run of CHAOS_TIME seconds of faults for each of
# CHAOS_SEEDS (tests/chaos/run: partitions, kills, freezes, killed children,
# spec and policy edits, then the checks), and a table of the figures
# across seeds; the failing seeds are printed with the command that reruns
# them.
CHAOS_SEEDS ?= $(shell seq 1 8)
CHAOS_TIME ?= 30
chaos: deps
	@$(MAKE) --no-print-directory pogo build/chaos/recorder
	@CHAOS_TIME=$(CHAOS_TIME) tests/chaos/seeds $(CHAOS_SEEDS)

# The chaos run's recorder of child processes (tests/chaos/recorder.c).
build/chaos/recorder: tests/chaos/recorder.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -o $@ $<

# Installs only what is missing; silent when everything is there.
deps:
	@missing=$$(for p in $(DEB_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing" $$missing; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

# A sub-make, so pkg-config runs after deps has installed the .pc files.
test: deps
	@$(MAKE) --no-print-directory pogo build/unit asan $(HELPERS) fuzz-build
	@tests/run

check: test

run: deps
	@$(MAKE) --no-print-directory pogo
	@examples/run

bench: deps bench-deps
	@$(MAKE) --no-print-directory pogo
	@bench/run

# The peers bench/supervisors.sh compares against: supervisord, s6, runit
# (Debian) and PM2 (npm, into bench/supervisors/node). Installs only what is
# missing; the packages' own services are not started (a policy-rc.d is put
# in place for the install if there is none). A failed install is reported
# and that peer shows as n/a in the table.
BENCH_DEB_PKGS := supervisor s6 runit
.PHONY: bench-deps
bench-deps:
	@missing=$$(for p in $(BENCH_DEB_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	  done); \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "make bench-deps: installing" $$missing; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  prc=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    prc=1; printf '#!/bin/sh\nexit 101\n' | $$sudo tee /usr/sbin/policy-rc.d >/dev/null; \
	    $$sudo chmod 755 /usr/sbin/policy-rc.d; fi; \
	  { $$sudo apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; } \
	    || echo "make bench-deps: apt-get failed; missing peers will show as n/a"; \
	  [ -z "$$prc" ] || $$sudo rm -f /usr/sbin/policy-rc.d; \
	fi; \
	if [ ! -x bench/supervisors/node/node_modules/.bin/pm2 ] && command -v npm >/dev/null; then \
	  echo "make bench-deps: npm install pm2"; \
	  npm install --prefix bench/supervisors/node --no-audit --no-fund --loglevel=error pm2 >/dev/null \
	    || echo "make bench-deps: npm install pm2 failed; PM2 will show as n/a"; \
	fi

# make soak: two agents whose children restart constantly for SOAK_TIME
# seconds; their RSS and Lua heap must stay flat (bench/soak.sh).
SOAK_TIME ?= 1800
.PHONY: soak
soak: deps
	@$(MAKE) --no-print-directory pogo
	@DURATION=$(SOAK_TIME) bash bench/soak.sh

install: pogo
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/pogo/lua/pogo
	install -m 0755 pogo $(DESTDIR)$(PREFIX)/bin/pogo
	install -m 0644 lua/pogo/*.lua $(DESTDIR)$(PREFIX)/share/pogo/lua/pogo/

clean:
	rm -rf build pogo

-include $(OBJS:.o=.d) $(AOBJS:.o=.d) $(UNIT_OBJS:.o=.d) $(AUNIT_OBJS:.o=.d)
