#!/usr/bin/env bash
# The README's results tables: every variant trained on MNIST and on Fashion-MNIST with one
# budget, then `compare` on the same test images per data set.
#
#   bash benchmarks/zoo_results.sh OUT [EPOCHS] [K] [N_TEST]
#
# Runs go to OUT/runs/<dataset>/<variant>/version_0 (a fresh OUT each time: the compare reads
# version_0), the wall time of each fit to OUT/fit_seconds.csv, and the comparisons to
# OUT/compare_<dataset>/. Also trained: FactorVAE with gamma=0 on MNIST (the TC baseline of
# gamma > 0) and the 2-D conv VAE of the Keras tutorial on MNIST (its latent figures).
set -euo pipefail

OUT=${1:?usage: bash benchmarks/zoo_results.sh OUT [EPOCHS] [K] [N_TEST]}
EPOCHS=${2:-10}
K=${3:-1000}
N_TEST=${4:-2000}
VARIANTS="vae beta_vae cvae iwae vamp_vae dip_vae info_vae wae beta_tcvae factor_vae vq_vae ladder_vae"

mkdir -p "$OUT"
cd "$OUT"
[ -f fit_seconds.csv ] || echo "dataset,experiment,epochs,seconds" > fit_seconds.csv

fit() {  # fit DATASET NAME CONFIG [FLAGS...]: one run, timed, skipped when already finished
    local dataset=$1 name=$2 config=$3
    shift 3
    if grep -q "^$dataset,$name," fit_seconds.csv; then
        return
    fi
    local start=$SECONDS
    python -m vae_zoo fit --config "$config" --trainer.max_epochs="$EPOCHS" "$@"
    echo "$dataset,$name,$EPOCHS,$((SECONDS - start))" >> fit_seconds.csv
}

for dataset in mnist fashion_mnist; do
    for variant in $VARIANTS; do
        fit "$dataset" "$variant" "$dataset/$variant"
    done
done
fit mnist factor_vae_gamma0 mnist/factor_vae --model.init_args.gamma=0
fit mnist conv_vae_2d mnist/conv_vae_2d

for dataset in mnist fashion_mnist; do
    runs=()
    for variant in $VARIANTS; do
        runs+=("runs/$dataset/$variant/version_0")
    done
    if [ "$dataset" = mnist ]; then
        runs+=("runs/mnist/factor_vae/version_1")  # gamma = 0
    fi
    python -m vae_zoo compare "${runs[@]}" --k "$K" --n_test "$N_TEST" --out "compare_$dataset"
done
python -m vae_zoo latent runs/mnist/vae/version_1 --out latent_conv_vae_2d  # the 2-D conv VAE
