# tandem: the two commands of README.md are `make serve` and `make test`.
BUILD ?= build
BUILD_ASAN ?= build-asan
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

PORT ?= 8000
SERVE_FLAGS ?=

.PHONY: deps pyenv build model test-models test test-unit test-asan test-tsan serve bench fuzz fuzz-openai fuzz-kv-frame clean cuda-report

deps:
	./scripts/install-deps

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

model:
	./scripts/fetch-model

# The models the tests run besides the default: Gemma 3 270M (Q4_K_M; K-quants, sliding
# windows, a SentencePiece vocabulary of 262k), checked against llama.cpp's outputs.
test-models: model
	./scripts/fetch-model gemma3-270m

# The Python environment of the end-to-end tests (openai SDK, grpcio, pytest, selenium).
pyenv:
	./scripts/python-env > /dev/null

# Every test: unit tests, tests against llama.cpp's outputs on the default model, the daemon
# end to end (openai SDK, grpcio, curl), and the same suite under ASan/UBSan.
test: build test-models pyenv
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) test-asan
	$(MAKE) deploy-check

test-unit: build test-models pyenv
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps test-models pyenv
	cmake -S . -B $(BUILD_ASAN) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DTANDEM_SANITIZE=address,undefined -DTANDEM_CUDA=OFF $(CMAKE_FLAGS)
	cmake --build $(BUILD_ASAN) -j $(JOBS)
	cd $(BUILD_ASAN) && UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS)

# deploy/: renders the kustomize overlays with a current kubectl, validates them offline against
# the Kubernetes schemas, lints the Dockerfiles, and runs the colocated pod as local processes
# (probes, a request with the Secret's API key, SIGTERM drain). docs/deploy.md.
.PHONY: deploy-check
deploy-check: build model
	./deploy/check/run --build-dir $(BUILD)

# ThreadSanitizer over the suite (not part of `make test`: it doubles CI time again).
test-tsan: deps test-models pyenv
	cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DTANDEM_SANITIZE=thread -DTANDEM_CUDA=OFF $(CMAKE_FLAGS)
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tests/tsan.supp" ctest --output-on-failure -j $(JOBS)

# The daemon on the default model: OpenAI-compatible HTTP on $(PORT), gRPC on 50051.
serve: build model
	@echo "tandemd: serving $(MODEL) at http://localhost:$(PORT)/v1 (Ctrl-C drains and stops)"
	$(BUILD)/bin/tandemd --model $(MODEL) --port $(PORT) $(SERVE_FLAGS)

bench: build model
	./bench/engine/run

# libFuzzer target for the GGUF parser (clang). FUZZ_SECONDS bounds the run.
FUZZ_SECONDS ?= 60
fuzz: build
	mkdir -p $(BUILD)/fuzz/corpus
	for t in q4_1 q8_0 f16; do $(BUILD)/bin/tandem-make-test-model --out $(BUILD)/fuzz/corpus/seed-$$t.gguf \
	  --type $$t --hidden 32 --heads 2 --ffn 32 --layers 1; done
	clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. tests/fuzz/gguf_fuzz.cc \
	  model/gguf_file.cc model/model_config.cc kernels/quant.cc \
	  $$(pkg-config --libs absl_statusor absl_strings absl_str_format absl_raw_hash_set absl_hash) \
	  -o $(BUILD)/fuzz/gguf_fuzz
	$(BUILD)/fuzz/gguf_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 \
	  $(BUILD)/fuzz/corpus

# libFuzzer target for the OpenAI request parsers, validation and renderers (clang).
OPENAI_SRC = server/openai/errors.cc server/openai/finish_reason.cc server/openai/json_body.cc \
  server/openai/request_parser.cc server/openai/response_render.cc server/openai/slo.cc \
  server/openai/validate.cc model/sampler.cc
fuzz-openai:
	mkdir -p $(BUILD)/fuzz/openai_corpus
	clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -I. tests/fuzz/openai_fuzz.cc \
	  $(OPENAI_SRC) \
	  $$(pkg-config --libs absl_statusor absl_status absl_strings absl_str_format absl_cord \
	    absl_raw_hash_set absl_hash) \
	  -o $(BUILD)/fuzz/openai_fuzz
	$(BUILD)/fuzz/openai_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 \
	  -dict=tests/fuzz/openai.dict $(BUILD)/fuzz/openai_corpus tests/fuzz/openai_corpus

# libFuzzer target for the KV handover wire format: frame parser, re-encoding, receive session.
fuzz-kv-frame:
	mkdir -p $(BUILD)/fuzz/kv_frame_corpus
	clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -I. tests/fuzz/kv_frame_fuzz.cc kvcache/transfer/kv_frame.cc kernels/backend.cc \
	  $$(pkg-config --libs absl_statusor absl_status absl_strings absl_cord) \
	  -o $(BUILD)/fuzz/kv_frame_fuzz
	$(BUILD)/fuzz/kv_frame_fuzz -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 \
	  $(BUILD)/fuzz/kv_frame_corpus

# Registers, static shared memory, stack and local-memory spills of every CUDA kernel for sm_80
# and sm_90a, from ptxas (nvcc -Xptxas -v); needs the CUDA toolkit, not a GPU.
cuda-report:
	./kernels/cuda/cuda_report.sh

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
