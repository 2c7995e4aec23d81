/* atp embedded runtime: C ABI.
 *
 * Load an atp bundle (manifest.json + graphs/engines + tokenizer + embedding table), hand it an image
 * and a prompt, get tokens back. Results match the Python runtime (atp.runtime.Session) token for token
 * on the same backend.
 *
 * Conventions
 * - Every call that can fail returns an atp_status; on failure atp_last_error() holds a message that says
 *   what was wrong (thread-local: read it on the thread that made the failing call). No C++ exception
 *   ever crosses this boundary.
 * - Handles are opaque. Objects returned through out-pointers belong to the caller and are released with
 *   the matching *_close / *_destroy call; pointers returned by atp_result_* stay valid until the next
 *   atp_generate or atp_context_destroy on that context.
 * - Thread safety: an atp_bundle is immutable after atp_bundle_open and may be shared by any number of
 *   threads; an atp_context belongs to one thread at a time (one context per thread). atp_tokenizer
 *   handles are read-only and shareable.
 * - Versioning: atp_version() returns "MAJOR.MINOR.PATCH"; ATP_ABI_VERSION changes only when this header
 *   changes incompatibly. Option structs carry struct_size so they can grow.
 */
#ifndef ATP_RUNTIME_H
#define ATP_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define ATP_API __declspec(dllexport)
#else
#define ATP_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* 2: adds atp_bundle_get_layout (ABI 1 apps keep compiling and linking unchanged). */
#define ATP_ABI_VERSION 2

typedef enum atp_status {
  ATP_OK = 0,
  ATP_ERR_INVALID_ARGUMENT = 1, /* null handle/pointer, bad option value */
  ATP_ERR_BUNDLE = 2,           /* missing/corrupt bundle, checksum mismatch, unknown format version */
  ATP_ERR_INPUT = 3,            /* unreadable image, wrong size/channels, empty prompt, no image token */
  ATP_ERR_OUT_OF_RANGE = 4,     /* keep K or ratio out of range, prompt longer than the profile */
  ATP_ERR_BACKEND = 5,          /* inference library missing or failed (ONNX Runtime, TensorRT) */
  ATP_ERR_UNSUPPORTED = 6,      /* feature not compiled in, or not supported by this bundle */
  ATP_ERR_STATE = 7,            /* call out of order (e.g. generate before an image was set) */
  ATP_ERR_INTERNAL = 8          /* bug: please report with the message */
} atp_status;

typedef struct atp_bundle atp_bundle;
typedef struct atp_context atp_context;
typedef struct atp_tokenizer atp_tokenizer;

/* Library version "MAJOR.MINOR.PATCH" and the ABI version this build implements. */
ATP_API const char* atp_version(void);
ATP_API int atp_abi_version(void);
/* Message of the last failed call on this thread ("" if none). */
ATP_API const char* atp_last_error(void);
/* Constant name of a status, e.g. "ATP_ERR_BUNDLE". */
ATP_API const char* atp_status_name(atp_status status);

/* ------------------------------------------------------------------------------------------ bundle */
typedef struct atp_open_options {
  uint32_t struct_size;            /* sizeof(atp_open_options) */
  const char* backend;             /* "ort" (ONNX Runtime CPU, default) or "trt" (TensorRT engines) */
  int verify;                      /* check size + sha256 of every bundle file (default 1) */
  int threads;                     /* CPU threads for ORT intra-op (0 = all cores) */
  const char* ort_library;         /* libonnxruntime.so.1.* (NULL: $ATP_ORT_LIBRARY, then the loader path); the
                                      first bundle opened in a process loads ONNX Runtime, later ones share it */
  const char* trt_target;          /* engines/<target>/ subfolder (NULL: the manifest's only/first target) */
  const char* trt_plugin_library;  /* TopKGate/MixedGemm plugin .so to load before deserializing (NULL: none) */
  int max_sequence;                /* longest prompt + answer, in tokens (0: from the manifest/engine profile, else unlimited) */
} atp_open_options;

/* Fill options with defaults (struct_size set). */
ATP_API void atp_open_options_init(atp_open_options* options);
/* Open a bundle directory: reads and verifies the manifest, loads tokenizer, embeddings and graphs. */
ATP_API atp_status atp_bundle_open(const char* path, const atp_open_options* options, atp_bundle** out);
ATP_API void atp_bundle_close(atp_bundle* bundle);

typedef struct atp_bundle_info {
  int32_t num_visual_tokens; /* N: visual tokens from the vision tower */
  int32_t default_keep;      /* K used when a request sets none */
  int32_t image_width, image_height;
  int32_t vocab_size;        /* rows of the embedding table */
  int32_t hidden_size;
  int32_t image_token_id;
  int32_t max_sequence;      /* 0 = unlimited */
  const char* backend;       /* "ort" or "trt" */
} atp_bundle_info;
ATP_API atp_status atp_bundle_get_info(const atp_bundle* bundle, atp_bundle_info* out);
/* How visual tokens enter the prompt (the manifest's token_layout and positions; ABI 2). Set struct_size to
   sizeof(atp_token_layout) before the call: a library newer than the app fills only the fields the app knows. */
typedef struct atp_token_layout {
  uint32_t struct_size;      /* sizeof(atp_token_layout) */
  int32_t images;            /* image placeholders per prompt */
  int32_t tiles;             /* views per image the vision graph encodes */
  int32_t tokens_per_tile;   /* visual tokens per view before pruning (tiles * tokens_per_tile = N) */
  int32_t placeholder_id;    /* image placeholder token id */
  const char* placeholder;   /* its text, e.g. "<image>" (owned by the bundle) */
  const char* kept_policy;   /* "global_topk_ascending" */
  const char* position_scheme; /* "1d", or "mrope" (Qwen2-VL M-RoPE: position_ids [3, B, S]) */
  const char* saliency;      /* what the default vision graph's gate reads: "cls_attention", "attention_received",
                                or "" (bundles made before it was recorded) */
  const char* kind;          /* how an image becomes tokens: "fixed", "anyres", "tiled" or "dynamic" (N per image) */
  int32_t deepstack_levels;  /* DeepStack levels the decoder adds (Qwen3-VL), 0 for none */
} atp_token_layout;
ATP_API atp_status atp_bundle_get_layout(const atp_bundle* bundle, atp_token_layout* out);
/* The bundle's tokenizer (owned by the bundle; do not close). */
ATP_API atp_status atp_bundle_tokenizer(const atp_bundle* bundle, const atp_tokenizer** out);

/* ------------------------------------------------------------------------------------------ context */
ATP_API atp_status atp_context_create(atp_bundle* bundle, atp_context** out);
ATP_API void atp_context_destroy(atp_context* ctx);

/* Visual tokens to keep for the next requests: 1..N. keep = 0 restores the bundle default. */
ATP_API atp_status atp_set_keep(atp_context* ctx, int32_t keep);
/* Fraction of visual tokens to keep, in (0, 1]: K = max(1, ceil(ratio * N)) as in atp.config.resolve_keep. */
ATP_API atp_status atp_set_keep_ratio(atp_context* ctx, double ratio);

/* Retention scorer for the next requests: one the bundle was exported with (manifest pruning.scorers,
 * e.g. "cls", "atp"); NULL or "" = the bundle's default. */
ATP_API atp_status atp_set_scorer(atp_context* ctx, const char* scorer);

/* Image as interleaved 8-bit pixels, channels 3 (RGB) or 4 (RGBA, composited on white), rows `stride`
 * bytes apart (0 = width * channels). Copied. Resized, cropped and normalised per the manifest. */
ATP_API atp_status atp_set_image_rgb8(atp_context* ctx, const uint8_t* pixels, int32_t width, int32_t height,
                                      int32_t channels, int32_t stride);
/* Image from a file (PNG, JPEG, BMP, TGA, PNM via stb_image). */
ATP_API atp_status atp_set_image_file(atp_context* ctx, const char* path);
/* Already preprocessed pixels, float32 [3, H, W] with H, W the bundle's image size. Copied. */
ATP_API atp_status atp_set_pixels(atp_context* ctx, const float* chw, size_t count);

/* Prompt text; wrapped in the manifest's chat template unless raw != 0 (then it must contain the image
 * placeholder exactly once). */
ATP_API atp_status atp_set_prompt(atp_context* ctx, const char* text, int raw);
/* Prompt as token ids, template already applied; must contain the image token id exactly once. */
ATP_API atp_status atp_set_prompt_ids(atp_context* ctx, const int32_t* ids, size_t count);

typedef struct atp_sampling {
  uint32_t struct_size;     /* sizeof(atp_sampling) */
  double temperature;       /* 0 = greedy (default) */
  int32_t top_k;            /* 0 = off */
  double top_p;             /* 1 = off */
  double repetition_penalty; /* 1 = off; > 1 discourages tokens already generated (CTRL-style) */
  uint64_t seed;            /* sampling seed */
  int32_t max_new_tokens;   /* default 32 */
  int ignore_eos;           /* generate exactly max_new_tokens */
} atp_sampling;
ATP_API void atp_sampling_init(atp_sampling* sampling);

/* Called once per generated token with its id and decoded text piece (UTF-8, may be "" while a multi-byte
 * character is incomplete). Return 0 to continue, non-zero to stop generation early (not an error). */
typedef int (*atp_token_callback)(void* user, int32_t token_id, const char* piece);

/* Run one request: preprocess + vision (with keep K) + prefill + decode. sampling NULL = greedy, 32 tokens. */
ATP_API atp_status atp_generate(atp_context* ctx, const atp_sampling* sampling, atp_token_callback callback,
                                void* user);

typedef struct atp_timings {
  double preprocess_ms;
  double vision_ms;
  double prefill_ms;
  double ttft_ms;             /* preprocess + vision + embed + prefill */
  double decode_ms_per_token; /* mean over decode steps (0 if only one token) */
  double total_ms;
  int32_t prompt_tokens;      /* prompt length after inserting the K visual tokens */
  int32_t generated_tokens;
  int32_t kept;               /* K */
} atp_timings;

/* Results of the last atp_generate on this context. */
ATP_API atp_status atp_result_tokens(const atp_context* ctx, const int32_t** ids, size_t* count);
ATP_API atp_status atp_result_text(const atp_context* ctx, const char** text);
ATP_API atp_status atp_result_kept_index(const atp_context* ctx, const int64_t** index, size_t* count);
ATP_API atp_status atp_result_timings(const atp_context* ctx, atp_timings* out);

/* ------------------------------------------------------------------------------------------ tokenizer */
/* A tokenizer.json (Hugging Face tokenizers format: WordLevel or BPE model, Whitespace / ByteLevel
 * pre-tokenizers, added and special tokens, TemplateProcessing) loaded standalone. */
ATP_API atp_status atp_tokenizer_open(const char* tokenizer_json_path, atp_tokenizer** out);
ATP_API void atp_tokenizer_close(atp_tokenizer* tok);
/* Encode UTF-8 text. Writes up to capacity ids; *count = the number of ids (call with capacity 0 to size). */
ATP_API atp_status atp_tokenizer_encode(const atp_tokenizer* tok, const char* text, int add_special_tokens,
                                        int32_t* ids, size_t capacity, size_t* count);
/* Decode ids to UTF-8 text (NUL-terminated when it fits); *length = bytes needed without the NUL. */
ATP_API atp_status atp_tokenizer_decode(const atp_tokenizer* tok, const int32_t* ids, size_t count,
                                        int skip_special_tokens, char* text, size_t capacity, size_t* length);

/* Preprocess an image file per the bundle's manifest into float32 [3, H, W] (for checks against Python); bundles
   with several views per image (anyres, tiled) give all of them, [V, 3, H, W] (*count = V * 3 * H * W);
   dynamic-resolution bundles (Qwen2.5-VL) give the image's patches, [P, 3 * T * p * p]. */
ATP_API atp_status atp_bundle_preprocess_file(const atp_bundle* bundle, const char* path, float* chw,
                                              size_t capacity, size_t* count);

#ifdef __cplusplus
}
#endif
#endif /* ATP_RUNTIME_H */
