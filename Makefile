# maester: PGXS build.  The one version number is default_version in
# maester.control; everything here is derived from it.
EXTENSION    = maester
EXTVERSION   = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big   = maester
OBJS         = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))

# Extension scripts (src/sql/README).  Released install scripts are frozen
# files at the top of the tree (listed in src/sql/released); the current
# version's install script and one update script from every older version
# are assembled from src/sql by src/sql/assemble.sh.
RELEASED     = $(shell awk '!/^\#/ && NF {print $$1}' src/sql/released)
UPDATE_FROM  = $(shell sh src/sql/assemble.sh from $(EXTVERSION))
SQL_SOURCES  = $(sort $(wildcard src/sql/tables/*.sql src/sql/functions/*.sql \
                                 src/sql/updates/*.sql)) src/sql/assemble.sh
DATA         = $(RELEASED:%=$(EXTENSION)--%.sql)
DATA_built   = $(UPDATE_FROM:%=$(EXTENSION)--%--$(EXTVERSION).sql)
ifeq ($(filter $(EXTVERSION),$(RELEASED)),)
DATA_built  += $(EXTENSION)--$(EXTVERSION).sql
endif

# pg_regress suites: sql/NAME.sql against expected/NAME.out, on a throwaway
# instance with the library preloaded (see test/regress.conf)
TESTS        = $(sort $(wildcard sql/*.sql))
REGRESS      = $(patsubst sql/%.sql,%,$(TESTS))
REGRESS_OPTS = --inputdir=. --temp-instance=tmp_check_regress \
               --temp-config=test/regress.conf --load-extension=maester

# TAP suites
TAP_TESTS    = 1
PROVE_TESTS  = $(sort $(wildcard test/t/*.pl))

PG_CPPFLAGS  = -I$(srcdir)/src -DMAESTER_VERSION=\"$(EXTVERSION)\" \
               $(shell xml2-config --cflags)
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter \
               -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK   = -lcurl -lxml2

EXTRA_CLEAN  = tmp_check tmp_check_regress results regression.diffs regression.out

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# SHA-256 through OpenSSL's EVP interface (src/sha256.c), as the server is
# built (with_ssl is PGXS's, hence after the include)
ifeq ($(with_ssl),openssl)
SHLIB_LINK  += -lcrypto
endif

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_SOURCES)
	sh src/sql/assemble.sh install $(EXTVERSION) > $@.tmp && mv $@.tmp $@

$(EXTENSION)--%--$(EXTVERSION).sql: $(SQL_SOURCES)
	sh src/sql/assemble.sh update $* $(EXTVERSION) > $@.tmp && mv $@.tmp $@

# PGXS tracks no header dependencies: rebuild everything when a header
# changes (shared structs such as the ledger record must agree everywhere)
$(OBJS): $(wildcard $(srcdir)/src/*.h)

.PHONY: print-version
print-version:
	@echo $(EXTVERSION)
