# Two entry points, each creating its own virtual environment from PyPI/Debian packages only:
#   make demo   - the main job on the embedded default model
#   make test   - the test suite (what CI runs)
# and make sanitize: the CPU op tests against an ASan/UBSan build of the extension (CI runs it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU wheel this project pins for development machines without a GPU.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv lint sanitize cuda-check clean

$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard cmake/*.cmake) $(shell find csrc -type f 2>/dev/null)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/egovlpv2 demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The linters and the type checker CI runs (configured in pyproject.toml and .clang-format).
lint: $(VENV)/.installed
	$(PY) -m ruff check python tests bench
	$(PY) -m ruff format --check python tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run -Werror $$(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh')

# cmake, ninja and pybind11 in the venv itself: the package's own build gets them in pip's
# isolated build environment, which is gone afterwards (versions as in pyproject.toml).
$(VENV)/.build-tools: $(VENV)/.installed
	$(PY) -m pip install -q "cmake>=3.24" "ninja>=1.10" "pybind11>=2.12"
	touch $@

# The CPU op tests against a build of _ops_cpu and _C with -fsanitize=address,undefined, in
# build/sanitize/ (the venv's installed package is not touched); see scripts/sanitize_ops.sh.
sanitize: $(VENV)/.build-tools
	VENV=$(VENV) bash scripts/sanitize_ops.sh

cuda-check:
	bash scripts/check_cuda_compile.sh

clean:
	rm -rf $(VENV) build dist
