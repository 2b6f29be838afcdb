# LoomFS developer commands.  `make up` starts a local cluster and mounts it at ./mnt,
# `make down` stops it, `make test` runs the whole test suite (it starts its own clusters).
# The mount options (allow_other,default_permissions) are scripts/cluster's default;
# MOUNT_OPTS=... overrides them for `make up`.

MDS ?= 2
OSD ?= 4
REPLICAS ?= 2
MNT ?= ./mnt
STATE ?= ./.loomfs
MOUNT_OPTS ?=
PYTEST_ARGS ?=

PYTHON := .venv/bin/python
CLUSTER = $(PYTHON) scripts/cluster --state $(STATE)
OPTS_ARG = $(if $(MOUNT_OPTS),--mount-opts $(MOUNT_OPTS))

.PHONY: deps up down status test bench bench-quick bench-meta bench-scale

deps:
	scripts/install-deps

up: deps
	$(CLUSTER) up --mds $(MDS) --osd $(OSD) --replicas $(REPLICAS) --mount $(MNT) $(OPTS_ARG)
	@echo
	@echo "LoomFS is mounted at $(MNT) (config $(STATE)/cluster.json, logs in $(STATE)/logs)."
	@echo "  ls $(MNT); cp -r some/dir $(MNT)/"
	@echo "  .venv/bin/loomfs status --cluster $(STATE)/cluster.json"
	@echo "  make status     # nodes, pids, alive or dead"
	@echo "  make down       # unmount and stop every node (data stays in $(STATE))"

down:
	@if [ -x $(PYTHON) ]; then $(CLUSTER) down; else echo "no .venv: nothing was started"; fi

status:
	$(CLUSTER) status

test: deps
	$(PYTHON) -m pytest -q -rs --durations=20 tests $(PYTEST_ARGS)

# Benchmarks, not tests: LoomFS (REPLICAS=1 and 2) beside a local disk, the pyfuse3
# passthrough and GlusterFS, measured by ../shared/bench/fsbench in one run.
# BENCH_TARGETS=local,loomfs-r1 narrows it; results land in results/bench-*/.
BENCH_TARGETS ?= local,passthrough,gluster,loomfs-r1,loomfs-r2
BENCH_ARGS ?=

bench: deps
	$(PYTHON) scripts/bench --targets $(BENCH_TARGETS) $(if $(BENCH_ARGS),-- $(BENCH_ARGS))

bench-quick: deps
	$(PYTHON) scripts/bench --quick --targets $(BENCH_TARGETS) $(if $(BENCH_ARGS),-- $(BENCH_ARGS))

# mdtest-style metadata benchmark (scripts/bench-meta): at RPC level and through the mount
# over 1, 2 and 4 shards, beside the local disk and GlusterFS, in one run and one table.
# BENCH_META_FILES=N (default 100000) sets the file count, BENCH_META_TARGETS=rpc-4,local
# narrows the targets; results land in results/bench-meta-*.json.
bench-meta: deps
	$(PYTHON) scripts/bench-meta

# Scale-out over rate-limited links (scripts/bench-scale, root): each daemon in its own
# network namespace; stripe counts 1, 2 and 4, then 1, 2 and 4 clients on their own links.
# BENCH_SCALE_ARGS="--rate 15 --mb 128" overrides the link rate (MiB/s) and file size.
BENCH_SCALE_ARGS ?=

bench-scale: deps
	$(PYTHON) scripts/bench-scale $(BENCH_SCALE_ARGS)
