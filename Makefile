# maester: PGXS build.  The one version number is default_version in
# maester.control; everything here is derived from it.
EXTENSION    = maester
EXTVERSION   = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big   = maester
OBJS         = src/maester.o src/template.o src/registry.o src/sha256.o \
               src/http.o src/provider.o src/provider_openai.o \
               src/provider_anthropic.o src/router.o src/gateway.o src/secrets.o \
               src/meter.o src/ledger.o src/worker.o src/budget.o \
               src/evaluate.o src/trace.o src/stat.o src/otlp.o src/job.o

DATA         = $(wildcard maester--*.sql)

# pg_regress suites: sql/NAME.sql against expected/NAME.out, on a throwaway
# instance with the library preloaded (see test/regress.conf)
TESTS        = $(sort $(wildcard sql/*.sql))
REGRESS      = $(patsubst sql/%.sql,%,$(TESTS))
REGRESS_OPTS = --inputdir=. --temp-instance=tmp_check_regress \
               --temp-config=test/regress.conf --load-extension=maester

# TAP suites
TAP_TESTS    = 1
PROVE_TESTS  = $(sort $(wildcard test/t/*.pl))

PG_CPPFLAGS  = -I$(srcdir)/src -DMAESTER_VERSION=\"$(EXTVERSION)\"
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter \
               -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK   = -lcurl

EXTRA_CLEAN  = tmp_check tmp_check_regress results regression.diffs regression.out

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)


# PGXS tracks no header dependencies: rebuild everything when a header
# changes (shared structs such as the ledger record must agree everywhere)
$(OBJS): $(wildcard $(srcdir)/src/*.h)

.PHONY: print-version
print-version:
	@echo $(EXTVERSION)
