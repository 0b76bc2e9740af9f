# sealpost — build, demo, tests and benchmarks.
#
#   make demo    the outgoing round trip on built-in defaults (throwaway GnuPG home)
#   make test    every test (unit, integration with real gpg), fmt and clippy
#   make bench   writes BENCHMARKS.md
#   make fuzz    fuzzes the mail parsers (FUZZ_SECONDS per target)
#
# Each target installs the Debian packages it needs when they are missing (root, apt-get).

CARGO ?= cargo
export DEBIAN_FRONTEND := noninteractive

BUILD_DEBS := build-essential pkg-config libgpgme-dev libsqlite3-dev
RUN_DEBS   := gnupg gpg-agent
# dovecot-imapd and isync (mbsync) are the reference server and client of the IMAP tests
# (tests/harness.rs). The harness runs private Dovecot instances on its own ports, base_dir
# and config; whether the package's postinst started the system dovecot does not matter.
# libsasl2-modules is only a Recommends of libsasl2-2: mbsync's AUTHENTICATE PLAIN needs it.
# python3-aiosmtpd runs tests/smtp_relay.py, the TLS+AUTH relay of the sendmail tests.
# postfix and miltertest run the milter tests (tests/milter.rs: private Postfix instances with
# `postfix -c DIR`); Postfix is preseeded to "No configuration", so no system instance starts.
TEST_DEBS  := $(RUN_DEBS) python3 python3-aiosmtpd dovecot-imapd isync libsasl2-modules postfix miltertest
# The milter benchmark runs a private Postfix instance too (as root; skipped otherwise).
BENCH_DEBS := $(RUN_DEBS) dovecot-imapd python3-aiosmtpd msmtp postfix

.PHONY: all build demo test bench fuzz deps-build deps-test deps-bench lint install clean

all: build

# Installs the named packages that are not installed yet (apt-get update first, once).
define ensure_debs
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps-build:
	$(call ensure_debs,$(BUILD_DEBS))

deps-test: deps-build
	$(call ensure_debs,$(TEST_DEBS))

deps-bench: deps-build
	$(call ensure_debs,$(BENCH_DEBS))

build: deps-build
	$(CARGO) build --locked

demo: deps-build
	$(call ensure_debs,$(RUN_DEBS))
	$(CARGO) run --locked --quiet -- demo

lint: deps-build
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test: deps-test lint
	$(CARGO) test --locked --lib --bins --tests

# Each benchmark rewrites its own section of the file after --out (without it, the section is
# only printed). The IMAP one builds a 50,000-message mailbox (64.5 MB; about 260 MB under
# /tmp with Dovecot's Maildir and sealpost's store);
# SEALPOST_BENCH_MESSAGES=N makes it smaller.
# The milter one sends 5,000 messages through Postfix and the milter (a few minutes); there
# SEALPOST_BENCH_MESSAGES=N sets that count and SEALPOST_BENCH_CLIENTS the SMTP sessions (16).
# The sync one encrypts 2 x 2,000 messages, syncs them from a throwaway Dovecot, resyncs 100
# folders and syncs 20,000 messages for the memory figure (about 6 minutes); there
# SEALPOST_BENCH_MESSAGES, SEALPOST_BENCH_FOLDERS and SEALPOST_BENCH_MEMORY_MESSAGES scale it.
bench: deps-bench
	$(CARGO) bench --locked --bench outgoing -- --out BENCHMARKS.md
	$(CARGO) bench --locked --bench imap -- --out BENCHMARKS.md
	$(CARGO) bench --locked --bench sendmail -- --out BENCHMARKS.md
	$(CARGO) bench --locked --bench milter -- --out BENCHMARKS.md
	$(CARGO) bench --locked --bench sync -- --out BENCHMARKS.md

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of what reads other people's mail: the
# IMAP summary, the outgoing core's reading, the incoming processing (real gpg, throwaway
# home). FUZZ_SECONDS per target (default 120); not part of `make test`.
FUZZ_SECONDS ?= 120
fuzz: deps-build
	$(call ensure_debs,$(RUN_DEBS))
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	tests/fuzz/run $(FUZZ_SECONDS)

# Installs what the systemd units and the docs name: the binary, the man page, the units, the
# tmpfiles entry, README and the example configuration. DESTDIR for a staging root. The
# units are not enabled, and no user is made (see the units' comments).
install: deps-build
	$(CARGO) build --locked --release
	install -D -m 0755 target/release/sealpost $(DESTDIR)/usr/bin/sealpost
	install -D -m 0644 contrib/man/sealpost-sendmail.8 $(DESTDIR)/usr/share/man/man8/sealpost-sendmail.8
	install -D -m 0644 README.md $(DESTDIR)/usr/share/doc/sealpost/README.md
	install -D -m 0644 contrib/sealpost.toml $(DESTDIR)/usr/share/doc/sealpost/sealpost.toml.example
	install -D -m 0644 contrib/imap-clients.md $(DESTDIR)/usr/share/doc/sealpost/imap-clients.md
	install -d $(DESTDIR)/usr/share/doc/sealpost/postfix
	install -m 0644 contrib/postfix/main.cf contrib/postfix/master.cf contrib/postfix/sealpost_milters $(DESTDIR)/usr/share/doc/sealpost/postfix/
	install -d $(DESTDIR)/usr/lib/systemd/system
	install -m 0644 systemd/*.service systemd/*.timer systemd/*.path $(DESTDIR)/usr/lib/systemd/system/
	install -D -m 0644 systemd/sealpost-tmpfiles.conf $(DESTDIR)/usr/lib/tmpfiles.d/sealpost.conf

clean:
	$(CARGO) clean
