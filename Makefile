# Two entry points, each creating its own virtual environment from PyPI/Debian packages only:
#   make demo   - the main job on the embedded default model
#   make test   - the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU wheel this project pins for development machines without a GPU.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv lint cuda-check clean

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

cuda-check:
	bash scripts/check_cuda_compile.sh

clean:
	rm -rf $(VENV) build dist
