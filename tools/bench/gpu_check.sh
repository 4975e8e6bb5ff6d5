#!/usr/bin/env bash
# The checks that need a CUDA device, in one script (a lent GPU's time is short): the CUDA tests, the TinyLlama
# step benchmark (dense MFU, EST stage speedups, the optimizer steps side by side, paper Tables 8/9), the memory
# benchmark's CUDA path (peak allocation against the planner, ZeRO-2 and ZeRO-3 on one GPU), --compile against eager
# per method and stage, the loss's memory (Liger-Kernel's fused loss when its wheel is in .whl/), and short launcher
# runs on the demo corpus (EST with the sparse optimizer, dense with torch's fused AdamW).
#   bash tools/bench/gpu_check.sh OUTDIR      (needs est_megatron and DeepSpeed importable)
set -u
out=${1:?usage: bash tools/bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() { echo; echo "== $* [$(date +%T)]"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"

if ls .whl/liger_kernel-*.whl >/dev/null 2>&1 && ! python3 -c "import liger_kernel" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/liger-site .whl/liger_kernel-*.whl \
        && export PYTHONPATH="/tmp/liger-site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import liger_kernel" 2>/dev/null && echo "Liger-Kernel: installed" || echo "Liger-Kernel: not installed"

step "CUDA tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_sparse_optimizer.py tests/test_model_subnet.py \
    tests/test_chunked_loss.py

step "step speed: tinyllama-1.1b, sequence 2048, micro-batch 8, bf16"
timeout 240 python3 tools/bench/step_speed.py --model tinyllama-1.1b --seq-length 2048 --micro-batch-size 8 \
    --device cuda --reps 3 --warmup 1 --modules --json "$out/step_speed.json"

step "--compile against eager, per method and stage: tinyllama-1.1b, sequence 2048, micro-batch 8, bf16"
timeout 300 python3 tools/bench/step_speed.py --model tinyllama-1.1b --seq-length 2048 --micro-batch-size 8 \
    --device cuda --reps 2 --warmup 1 --compile --json "$out/compile_ab.json"

step "memory: the bench's 200M model, ZeRO-2 and ZeRO-3, one GPU, bf16"
timeout 150 python3 tools/bench/memory.py --device cuda --zero 2,3 --nproc 1 --json "$out/memory.json"

step "loss memory: whole logits against the chunked output layer, TinyLlama's micro-batch (8 x 2048, vocab 32000)"
timeout 60 python3 tools/bench/loss_memory.py --device cuda --tokens 16384 --hidden-size 2048 --vocab-size 32000 \
    --json "$out/loss_memory.json"

step "demo: EST (tinyllama schedule, sparse AdamW), one GPU"
demo=/tmp/gpu_check_demo
timeout 200 python3 launch/pretrain_tinyllama.py --demo --demo-dir "$demo" --no-progress
cp "$demo/logs/metrics.jsonl" "$out/demo_est_metrics.jsonl" 2>/dev/null

step "dense on the demo data (torch fused AdamW), 80 steps"
argv=$(python3 -c "from est_megatron.demo import training_argv as a; d='$demo'; print(' '.join(a(d, d + '/tokenizer/demo.model', d + '/shards/slimpajama', d + '/shards/starcoder', False)))")
# shellcheck disable=SC2086
timeout 200 python3 launch/pretrain_tinyllama.py $argv --method dense --train-steps 80 --eval-interval 40 \
    --save /tmp/gpu_check_dense --load /tmp/gpu_check_dense --log-dir /tmp/gpu_check_dense/logs
cp /tmp/gpu_check_dense/logs/metrics.jsonl "$out/demo_dense_metrics.jsonl" 2>/dev/null
step done
