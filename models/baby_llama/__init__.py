"""baby-llama: llama.cpp's examples/baby-llama (commit 4480542) re-expressed over graphcore.

A one-layer llama (n_vocab 8, n_ctx 8, n_embd 32, n_head 8) learns to continue a sine wave of
tokens: 256 batches of 8 sequences, each optimised by 16 L-BFGS iterations on a squared-error
loss, then 128 tokens are generated greedily. With no options the program prints what the
original prints, in its format:

    python -m graphcore_models.baby_llama            # or the console script: baby-llama

Everything the original has is here under its own name: the hyper-parameters (plain and LoRA),
get_n_ff, init_model / set_param_model / randomize_model (and their _lora twins) with the
original's random stream (std::mt19937 + libstdc++'s normal_distribution<float>), the KV cache,
get_example_targets(_batch), lshift_examples, square_error_loss, cross_entropy_loss,
sample_softmax(_batch), the printing helpers, forward (generation), forward_batch (training),
forward_lora, plus forward_batch_lora (a batched LoRA forward the original does not have).

The package splits the program by concern: model (hyper-parameters, weights, KV cache, forward
graphs), rng (the original's random stream), data (the sine-wave data, sampling, printing),
train (losses, training graphs, the loop), generate, cli (options and main). The names are
re-exported here: `models.baby_llama.forward`, `models.baby_llama.main`, ...
"""
from .cli import build_model, check_args, main, new_model, parser, plot_loss
from .data import (example_tokens, format_token, get_example_targets, get_example_targets_batch, lshift_examples,
                   print_matrix, print_row, print_token, print_tokens, sample_softmax, sample_softmax_batch)
from .generate import generate
from .model import (LAYER_TENSORS, LAYER_TENSORS_LORA, LLAMA_TRAIN_MAX_NODES, RMS_NORM_EPS, LlamaHparams,
                    LlamaHparamsLora, LlamaKVCache, LlamaLayer, LlamaLayerLora, LlamaModel, LlamaModelLora,
                    baby_hparams, forward, forward_batch, forward_batch_lora, forward_lora, get_n_ff, init_kv_cache,
                    init_kv_cache_lora, init_model, init_model_lora, set_param_model, set_param_model_lora)
from .rng import (_LOGF, MT19937, RandomNormalDistribution, frand_normal, frand_normal_n,
                  init_random_normal_distribution, randomize_model, randomize_model_lora, randomize_tensor_normal)
from .train import (TrainingGraphs, build_training_graphs, compute_size, cross_entropy_loss, dump_graphs,
                    square_error_loss, train)
