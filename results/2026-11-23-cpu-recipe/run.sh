set -e
P=${P:-parscale-ear}  # the installed command (e.g. .venv/bin/parscale-ear)
s=$(date +%s)
$P train-vae --preset fmnist-32-cpu --data fashion-mnist --steps 300 --batch-size 64 --lr 2e-3 --max-images 10000 --out vae --no-progress --log-every 50
v=$(date +%s); echo "VAE_S $((v-s))"
$P train --vae vae --steps 600 --batch-size 64 --lr 1e-3 --max-images 10000 --out gen --no-progress --log-every 50
g=$(date +%s); echo "GEN_S $((g-v))"
$P sample --ckpt gen --n 100 --labels $(for i in $(seq 0 99); do echo $((i % 10)); done) --out samples.png
e=$(date +%s); echo "SAMPLE_S $((e-g))"; echo "TOTAL_S $((e-s))"
