"""train-text: llama.cpp's examples/train-text-from-scratch (commit 4480542) over graphcore.

Trains a llama (my_llama_model: token embeddings, per layer RMS-norm attention with rope and an
SiLU-gated feed-forward, output norm and projection) on a text file with Adam(W), flash attention or
the plain softmax path, gradient checkpointing and the graph allocator, and writes checkpoints and an
F32 llama GGUF llama.cpp's main runs:

    graphcore-train-text --vocab-model ggml-vocab-llama.gguf --train-data corpus.txt \\
        --ctx 64 --embd 256 --head 8 --layer 4 -b 8 --adam-iter 32 -s 1 \\
        --checkpoint-out chk-ITERATION.gguf --model-out model-ITERATION.gguf

The package splits the program by concern: model (hyper-parameters, weights and their random
init, the training graphs), data (train.cpp's tokenize_file, shuffling, batches, schedule), files
(the model GGUF and the checkpoint), train (main()'s run with train_opt_callback), cli (options).
"""
from .cli import main, parse_args, parser
from .data import (compute_samples_hash, get_example_targets_batch, learning_schedule, mt19937_seed_to_state,
                   shuffle_samples, tokenize_file)
from .files import TrainState, load_checkpoint_file, save_checkpoint_file, save_llama_model_file
from .model import TrainGraphs, TrainHparams, TrainModel, build_train_graphs, init_model, randomize_model
from .train import run
