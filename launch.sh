#!/usr/bin/env bash
# kd_research entry point. ./launch.sh help lists the commands.
set -euo pipefail
# Users' own model modules (--config.student.model=package.module:function) import from the
# directory this script was called from, as they would from a Python prompt there.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cd "$(dirname "$0")"

VENV="${KD_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.kd_setup_stamp"

usage() {
  cat <<'USAGE'
usage: ./launch.sh COMMAND [flags]

  setup        create .venv, install kd_research and its dependencies, get Fashion-MNIST
               (idempotent; KD_TF=gpu installs tensorflow[and-cuda] instead of tensorflow-cpu)
  quickstart   setup, then the few-labels experiment end to end (fashion_mnist:fewlabels pipeline
               in runs/quickstart) and print the results table
  test         setup, then the test suite on KD_TEST_WORKERS (2) processes (extra args go
               to pytest); --fast: the units only (no whole runs), for the edit-test loop
  train        train one model on labels:      --experiment=NAME[:ARG] --workdir=DIR --role=teacher|student
  distill      distil the student from a teacher: --workdir=DIR --config.teacher.path=RUN/model.keras
  pipeline     teacher -> student baseline -> distilled student -> results.md: --workdir=DIR
  eval         evaluate a finished run on the test split: --workdir=RUN
  keras_peer   distil like `distill` (method kd) with Keras' own keras.distillation.Distiller
               and fit, on the same data, budget, alpha and T: --config.teacher.path=T.keras
  export       SavedModel + TFLite (float32, float16, int8) of a finished run, verified on the
               test split: --workdir=RUN (writes RUN/export/, export_report.json)
  multiworker  N local worker processes (MultiWorkerMirroredStrategy on 127.0.0.1):
               --num_workers=N COMMAND [flags], e.g. multiworker --num_workers=2 distill ...
  slurm        submit a campaign plan (pipeline ... --plan writes WORKDIR/plan.json) to Slurm
               as job arrays with dependencies: --plan=WORKDIR [--sbatch="--partition=..."];
               rerun to submit what is left (finished runs are skipped)
  job          one job of a plan (what each Slurm array task runs): --plan=WORKDIR --job=ID
  convert      TFRecord shards + manifest from an image folder or a built-in dataset:
               --source=folder:PATH|NAME --output=DIR --shards=N (then tfrecord:DIR)
  bench        distillation throughput: Keras-fit Distiller vs our loop variants [--quick]
  benchmark    the method benchmark campaign at its converged budget
               (experiments/method_benchmark.py; resumable: rerun to continue), then
               results/RESULTS.md and its figure
  benchmark_features  only the feature methods (ofd, reviewkd, vid, nst, cc), kd and the
               baselines of that campaign, on both pairs (the same runs: the full campaign
               skips them later), then results/RESULTS.md and its figure from what exists
  benchmark_fitnets  only FitNets (and the teachers and labels-only students) of that
               campaign on both pairs: results/RESULTS_FITNETS.md
  benchmark_vit  the cross-architecture pairs of that campaign (CNN -> ViT with DeiT and
               OFA-KD, ViT -> CNN, ViT -> ViT; the ViT's learning rate chosen on
               validation first): results/RESULTS_VIT.md
  benchmark_short  the same at the earlier unconverged budget where plain KD lost, and the
               "why" axes: results/RESULTS_SHORT.md, results/RESULTS_WHY.md
  config_reference  regenerate docs/config.md from the config schema (every field, its
               default and meaning; --check: exit 1 if the page is stale)
  report       compare finished runs below --workdir=DIR (seeds grouped as mean +- std)
               into DIR/report.md [--output=FILE]
  tensorboard  start TensorBoard on 127.0.0.1 [--logdir=DIR] [--port=N]
  help         this message; `./launch.sh train --helpfull` lists every flag

Flags after train/distill/pipeline/eval go to `python -m kd_research.main`, e.g.
  ./launch.sh pipeline --experiment=fashion_mnist:full --workdir=runs/full --config.distill.temperature=8
USAGE
}

have_fashion_mnist() {
  local d
  for d in "${KD_DATA_DIR:-}" /usr/share/datasets/fashion-mnist "$HOME/.keras/datasets/fashion-mnist"; do
    if [ -n "$d" ] && [ -e "$d/train-images-idx3-ubyte.gz" -o -e "$d/train-images-idx3-ubyte" ]; then
      return 0
    fi
  done
  return 1
}

get_data() {
  have_fashion_mnist && return 0
  echo "[setup] Fashion-MNIST not found; installing Debian's dataset-fashion-mnist package" >&2
  if command -v apt-get >/dev/null 2>&1; then
    local sudo="" log="$VENV/apt.log"
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    mkdir -p "$VENV"
    # apt's output goes to a log, as pip's does, and is shown only if the installation fails.
    if { $sudo apt-get update -q && $sudo apt-get install -y -q dataset-fashion-mnist; } \
        > "$log" 2>&1; then
      have_fashion_mnist && return 0
    fi
    cat "$log" >&2
    echo "[setup] apt-get could not install dataset-fashion-mnist (log above, also in $log)" >&2
  fi
  echo "[setup] apt did not work; trying Keras' downloader (needs internet)" >&2
  if "$PY" -c "import keras; keras.datasets.fashion_mnist.load_data()" >&2 2>/dev/null; then
    have_fashion_mnist && return 0
  fi
  echo "[setup] WARNING: could not obtain Fashion-MNIST. Install it with" \
       "'sudo apt-get install dataset-fashion-mnist', or copy the four IDX .gz files into" \
       "\$KD_DATA_DIR. Tests that need the real data will fail until then." >&2
  return 0
}

setup() {
  local want
  want="$(cat pyproject.toml; echo "${KD_TF:-cpu}")"
  if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    get_data
    return 0
  fi
  echo "[setup] creating $VENV and installing kd_research[${KD_TF:-cpu},test,tfds]" >&2
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # pip's own notices go to a log, shown only if the installation fails.
  if ! { "$PY" -m pip install -q --upgrade pip &&
         "$PY" -m pip install -q -e ".[${KD_TF:-cpu},test,tfds]"; } > "$VENV/setup.log" 2>&1; then
    cat "$VENV/setup.log" >&2
    echo "[setup] installation failed (log above, also in $VENV/setup.log)" >&2
    exit 1
  fi
  printf '%s' "$want" > "$STAMP"
  get_data
}

main_py() {
  exec "$PY" -m kd_research.main "$@"
}

# Keras' own Distiller on the article pair, 3 seeds, with the documented loss and with a
# KLDivergence() instance, at the alpha and T that our kd chose on validation:
# keras_peers ROOT TEACHER [flags].
keras_peers() {
  local root="$1" teacher="$2" seed kl alpha temperature
  shift 2
  read -r alpha temperature < <("$PY" -c 'import json, sys
kd = json.load(open(sys.argv[1]))["kd"]["overrides"]
print(kd["alpha"], kd["temperature"])' "${root}_sweep/article/selection.json")
  for kl in default instance; do
    for seed in 0 1 2; do
      "$PY" -m kd_research.main keras_peer --keras_kl=$kl \
        --config.teacher.path="$teacher" --config.student.seed=$seed \
        --config.distill.alpha.start=$alpha --config.distill.alpha.end=$alpha \
        --config.distill.temperature.start=$temperature \
        --config.distill.temperature.end=$temperature \
        --workdir="$root/article/keras_distiller_$kl/seed_$seed" "$@"
    done
  done
}

# The method benchmark at its converged budget (experiments/method_benchmark.py).
benchmark_campaign() {
  local root="${KD_BENCHMARK_DIR:-runs/benchmark}" seed
  local run=("$PY" -m kd_research.main)
  "${run[@]}" pipeline --experiment=method_benchmark:article --workdir="$root/article" "$@"
  for seed in 0 1 2; do
    "${run[@]}" train --role=student --experiment=method_benchmark:curve \
      --config.student.seed=$seed --workdir="$root/curve/seed_$seed" "$@"
  done
  keras_peers "$root" "$root/article/teacher/model.keras" \
    --experiment=method_benchmark:article "$@"
  "${run[@]}" pipeline --experiment=method_benchmark:resnet --workdir="$root/resnet" "$@"
  for seed in 0 1 2; do  # The resnet pair's labels-only student at twice its budget.
    "${run[@]}" train --role=student --experiment=method_benchmark:resnet \
      --config.student.epochs=40 --config.student.seed=$seed \
      --workdir="$root/resnet_curve/seed_$seed" "$@"
  done
  for pair in article resnet; do  # One born-again generation: students of the kd student.
    for seed in 0 1 2; do
      "${run[@]}" distill --experiment=method_benchmark:${pair}_born_again \
        --config.teacher.path="$root/$pair/student_kd_kd/seed_0/model.keras" \
        --config.student.seed=$seed --workdir="$root/${pair}_born_again/seed_$seed" "$@"
    done
  done
  "${run[@]}" report --workdir="$root" --sweep="${root}_sweep" --output=results/RESULTS.md \
    --figure=results/results_methods.svg > /dev/null
  echo "benchmark: results/RESULTS.md and results/results_methods.svg written"
}

# The cross-architecture pairs (method_benchmark:vit, vit_reverse, vit_from_vit) below
# runs/benchmark_vit: the resnet pair's CNN teacher, the ViT student's learning rate chosen
# on validation (labels only, seed 0), then the three pipelines, and results/RESULTS_VIT.md.
benchmark_vit_campaign() {
  local root="${KD_BENCHMARK_DIR:-runs/benchmark}" vit="${KD_BENCHMARK_VIT_DIR:-runs/benchmark_vit}"
  local run=("$PY" -m kd_research.main) lr
  local cnn_teacher="$root/resnet/teacher" vit_teacher="$vit/vit_reverse/teacher"
  # The same run as the resnet pipeline's teacher (finished: skipped).
  "${run[@]}" train --role=teacher --experiment=method_benchmark:resnet \
    --workdir="$cnn_teacher" "$@"
  for lr in 0.001 0.003 0.01; do
    "${run[@]}" train --role=student --experiment=method_benchmark:vit \
      --config.optimizer.learning_rate.start=$lr --workdir="${vit}_sweep/lr/lr_$lr" "$@"
  done
  lr="$("$PY" -c 'import json, sys
accuracy = {d: json.load(open(d + "/results.json"))["validation_accuracy"] for d in sys.argv[1:]}
print(max(accuracy, key=accuracy.get).rsplit("lr_", 1)[1])' "${vit}_sweep"/lr/lr_*)"
  echo "benchmark_vit: the ViT student's learning rate, chosen on validation: $lr"
  "${run[@]}" pipeline --experiment=method_benchmark:vit --workdir="$vit/vit" \
    --config.teacher.path="$cnn_teacher/model.keras" \
    --config.optimizer.learning_rate.start=$lr "$@"
  "${run[@]}" train --role=teacher --experiment=method_benchmark:vit_reverse \
    --config.optimizer.learning_rate.start=$lr --workdir="$vit_teacher" "$@"
  "${run[@]}" pipeline --experiment=method_benchmark:vit_reverse --workdir="$vit/vit_reverse" \
    --config.teacher.path="$vit_teacher/model.keras" "$@"
  "${run[@]}" pipeline --experiment=method_benchmark:vit_from_vit --workdir="$vit/vit_from_vit" \
    --config.teacher.path="$vit_teacher/model.keras" \
    --config.optimizer.learning_rate.start=$lr "$@"
  "${run[@]}" report --workdir="$vit" --sweep="${vit}_sweep" --output=results/RESULTS_VIT.md \
    > /dev/null
  echo "benchmark_vit: results/RESULTS_VIT.md written"
}

# One part of the campaign above on both pairs (method_benchmark:article_PART and
# resnet_PART: the same runs, which the full campaign then skips), and its page:
# benchmark_part PART PAGE FIGURE [flags].
benchmark_part() {
  local part="$1" page="$2" figure="$3" root="${KD_BENCHMARK_DIR:-runs/benchmark}" pair
  shift 3
  for pair in article resnet; do
    "$PY" -m kd_research.main pipeline --experiment=method_benchmark:${pair}_$part \
      --workdir="$root/$pair" "$@"
  done
  "$PY" -m kd_research.main report --workdir="$root" --sweep="${root}_sweep" \
    --output="$page" --figure="$figure" > /dev/null
  echo "benchmark_$part: $page and $figure written"
}

# The previous, unconverged protocol (method_benchmark:short) where plain KD lost, and the
# axes of results/RESULTS_WHY.md.
benchmark_short_campaign() {
  local root="${KD_BENCHMARK_SHORT_DIR:-runs/benchmark_short}" why="${KD_WHY_DIR:-runs/why}"
  local run=("$PY" -m kd_research.main) width
  local teacher="$root/article/teacher/model.keras"
  "${run[@]}" pipeline --experiment=method_benchmark:short --workdir="$root/article" "$@"
  "${run[@]}" pipeline --experiment=method_benchmark:long --workdir="$root/long" \
    --config.teacher.path="$teacher" "$@"
  keras_peers "$root" "$teacher" --experiment=method_benchmark:short "$@"
  "${run[@]}" pipeline --experiment=method_benchmark:why --workdir="$why/teacher_w4" \
    --config.teacher.width=4 "$@"
  # The stronger teacher: the few-labels quickstart's (every label of the 55,000 images).
  "${run[@]}" train --role=teacher --experiment=fashion_mnist:fewlabels \
    --workdir=runs/fewlabels/teacher "$@"
  "${run[@]}" pipeline --experiment=method_benchmark:why --workdir="$why/teacher_strong" \
    --config.teacher.path=runs/fewlabels/teacher/model.keras "$@"
  for width in 8 32; do
    "${run[@]}" pipeline --experiment=method_benchmark:why --workdir="$why/width$width" \
      --config.teacher.path="$teacher" --config.student.width=$width "$@"
  done
  "${run[@]}" report --workdir="$root" --sweep="${root}_sweep" --output=results/RESULTS_SHORT.md \
    > /dev/null
  "${run[@]}" report --workdir="$why" --output=results/RESULTS_WHY.md > /dev/null
  echo "benchmark_short: results/RESULTS_SHORT.md and results/RESULTS_WHY.md written"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  quickstart)
    start=$(date +%s)
    setup
    "$PY" -m kd_research.main pipeline --experiment=fashion_mnist:fewlabels \
      --workdir="${KD_QUICKSTART_DIR:-runs/quickstart}" "$@"
    echo "quickstart wall time: $(( $(date +%s) - start )) s (setup included)" ;;
  test)
    setup
    # Spread over KD_TEST_WORKERS processes (default 2: the cores of the slowest machine
    # measured; tests/conftest.py keeps the modules with a shared server on one worker).
    workers=(-n "${KD_TEST_WORKERS:-2}" --dist loadgroup)
    if [ "${1:-}" = "--fast" ]; then
      shift
      "$PY" -m pytest -q "${workers[@]}" -m "not slow" "$@"  # The units: the edit-test loop.
    else
      "$PY" -m pytest -q "${workers[@]}" --durations=15 "$@"
    fi ;;
  train|distill|pipeline|eval|export|keras_peer)
    [ -x "$PY" ] || setup
    main_py "$cmd" "$@" ;;
  bench)
    [ -x "$PY" ] || setup
    exec "$PY" -m kd_research.tools.bench "$@" ;;
  convert)
    [ -x "$PY" ] || setup
    exec "$PY" -m kd_research.tools.tfrecord_shards "$@" ;;
  config_reference)
    [ -x "$PY" ] || setup
    TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" exec "$PY" -m kd_research.tools.config_reference "$@" ;;
  benchmark)
    # The method benchmark campaign (experiments/method_benchmark.py): resumable, finished
    # runs are skipped; rerun to continue. Then results/RESULTS.md and its figure.
    [ -x "$PY" ] || setup
    benchmark_campaign "$@" ;;
  benchmark_features)
    [ -x "$PY" ] || setup
    benchmark_part features results/RESULTS.md results/results_methods.svg "$@" ;;
  benchmark_vit)
    [ -x "$PY" ] || setup
    benchmark_vit_campaign "$@" ;;
  benchmark_fitnets)
    [ -x "$PY" ] || setup
    benchmark_part fitnets results/RESULTS_FITNETS.md results/results_methods_fitnets.svg "$@" ;;
  benchmark_short)
    [ -x "$PY" ] || setup
    benchmark_short_campaign "$@" ;;
  report)
    [ -x "$PY" ] || setup
    exec "$PY" -m kd_research.main report "$@" ;;
  multiworker)
    [ -x "$PY" ] || setup
    exec "$PY" -m kd_research.main multiworker "$@" ;;
  slurm|job)
    [ -x "$PY" ] || setup
    exec "$PY" -m kd_research.main "$cmd" "$@" ;;
  tensorboard)
    [ -x "$PY" ] || setup
    logdir="runs"; port=6006
    for a in "$@"; do
      case "$a" in
        --logdir=*) logdir="${a#--logdir=}" ;;
        --port=*) port="${a#--port=}" ;;
        *) echo "tensorboard: unknown flag $a (valid: --logdir=DIR --port=N)" >&2; exit 2 ;;
      esac
    done
    echo "TensorBoard for $logdir at http://127.0.0.1:$port/"
    exec "$PY" -m tensorboard.main --logdir="$logdir" --host=127.0.0.1 --port="$port" ;;
  --helpfull)
    [ -x "$PY" ] || setup
    main_py train --helpfull ;;
  help|-h|--help) usage ;;
  *) echo "unknown command: $cmd" >&2; usage >&2; exit 2 ;;
esac
