"""The benchmark's row runners: Keras-fit references and our loop built as a real run.

The fit rows (a, j) train a Keras Distiller with ``fit`` on the arrays; our loop's rows
(b-i) and the method rows resolve a run with ``train/resolve.py`` (the same code as
``distill`` and ``train``) and time its traced loop on the run's own training stream.
"""

import os
import time

import numpy as np

from kd_research.tools import profiling


def forward_flops(model):
  """Multiply-add FLOPs (x2) of the Conv2D, Dense and multi-head attention layers for one
  example (a Dense layer on tokens [T, D] counts once per token; attention counts its four
  projections and its two T x T products)."""
  import keras  # pylint: disable=g-import-not-at-top
  total = 0
  for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.Conv2D):
      h, w, cout = layer.output.shape[1:]
      total += 2 * h * w * cout * int(np.prod(layer.kernel_size)) * layer.input.shape[-1]
    elif isinstance(layer, keras.layers.Dense):
      positions = int(np.prod(layer.input.shape[1:-1]))
      total += 2 * positions * layer.input.shape[-1] * layer.units
    elif isinstance(layer, keras.layers.MultiHeadAttention):
      tokens, width = layer.output.shape[1:]
      inner = layer.num_heads * layer.key_dim
      total += 2 * tokens * width * inner * 4 + 2 * 2 * tokens * tokens * inner
  return total


def matmul_peak(dtype, n=2048, reps=10):
  """GFLOP/s of an n x n matmul in ``dtype`` (median of reps after warm-up)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.cast(tf.random.normal([n, n]), dtype)
  from kd_research.common import timing  # pylint: disable=g-import-not-at-top
  mm = tf.function(lambda x: tf.matmul(x, x))
  return 2 * n**3 / timing.median_seconds(lambda: mm(a).numpy(), reps, warmup=1) / 1e9


def training_arrays(opts, batch):
  """(images, labels, classes) of --dataset, a whole number of batches (the fit rows' data)."""
  from kd_research.data import sources  # pylint: disable=g-import-not-at-top
  raw = sources.load(opts.dataset)
  n = min(len(raw.train_x), opts.examples or len(raw.train_x))
  n = (n // batch) * batch
  return raw.train_x[:n], raw.train_y[:n], raw.num_classes


def _rate(times, batch, window):
  """Median examples/s over windows of ``window`` steps from per-call end times."""
  rates = [window * batch / (t1 - t0) for t0, t1 in zip(times[:-1], times[1:])]
  return float(np.median(rates))


def _models(opts, num_classes, shape, precision, teachers=1):
  import keras  # pylint: disable=g-import-not-at-top
  from kd_research.models import registry as model_registry  # pylint: disable=g-import-not-at-top
  from kd_research.runtime import precision as precision_lib  # pylint: disable=g-import-not-at-top
  precision_lib.set_policy(precision)
  keras.utils.set_random_seed(0)
  teacher_models = [model_registry.build(opts.teacher, shape, num_classes, opts.teacher_width)
                    for _ in range(teachers)]
  student = model_registry.build(opts.student, shape, num_classes, opts.student_width)
  return teacher_models, student


def run_fit_distiller(opts, x, y, num_classes):
  """(a): the seed article's Distiller(keras.Model) with train_step, trained with fit."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  (teacher,), student = _models(opts, num_classes, x.shape[1:], "none")

  class Distiller(keras.Model):
    """As in the article: teacher in inference mode, KL on softened probabilities."""

    def __init__(self, student, teacher):
      super().__init__()
      self.student, self.teacher = student, teacher

    def call(self, inputs):
      return self.student(inputs)

    def train_step(self, batch):
      images, labels = batch
      teacher_logits = self.teacher(images, training=False)
      with tf.GradientTape() as tape:
        logits = self.student(images, training=True)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        kl = keras.losses.KLDivergence()(tf.nn.softmax(teacher_logits / 4.0),
                                         tf.nn.softmax(logits / 4.0)) * 16.0
        loss = 0.7 * kl + 0.3 * ce
      grads = tape.gradient(loss, self.student.trainable_variables)
      self.optimizer.apply_gradients(zip(grads, self.student.trainable_variables))
      return {"loss": loss}

  distiller = Distiller(student, teacher)
  distiller.compile(optimizer=keras.optimizers.Adam())
  return _time_fit(opts, distiller, x, y), forward_flops(student), forward_flops(teacher)


def _time_fit(opts, model, x, y):
  """Median examples/s of ``model.fit`` over timed windows after warm-up windows."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  times = []

  class Clock(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      if batch >= opts.window and batch % opts.window == 0:
        times.append(time.perf_counter())

  steps = opts.window * (opts.windows + 2)
  ds = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y)).repeat().batch(
      opts.batch, drop_remainder=True).prefetch(2)
  model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
  return _rate(times, opts.batch, opts.window)


def run_keras_distiller(opts, x, y, num_classes):
  """(j): keras.distillation.Distiller + LogitsDistillation (T 4 with a KLDivergence()
  instance, so that it computes KL x T^2 of the softened probabilities: Keras' default
  string loss does not, see keras_peer.py; student loss weight 0.3, i.e. alpha 0.7 as rows
  (a) and (b)), trained by fit: the official peer."""
  import keras  # pylint: disable=g-import-not-at-top
  from kd_research.tools import keras_peer  # pylint: disable=g-import-not-at-top
  (teacher,), student = _models(opts, num_classes, x.shape[1:], "none")
  distiller = keras_peer.distiller(teacher, student, 0.7, 4.0, kl="instance")
  distiller.compile(optimizer=keras.optimizers.Adam(),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return _time_fit(opts, distiller, x, y), forward_flops(student), forward_flops(teacher)


# Modifiers a --methods row may add to its method: 'kd+ctkd', 'dkd+ls', 'kd+ls+ctkd';
# 'kd+sgd' and 'kd+dot' (DOT's two momenta: their cost against the same SGD).
MODIFIERS = {"ctkd": {"distill.ctkd.enabled": True},
             "ls": {"distill.logit_standardization": True},
             "sgd": {"optimizer.name": "sgd"},
             "dot": {"optimizer.name": "sgd", "optimizer.dot_delta": 0.075}}


def method_overrides(row):
  """The config overrides of a --methods row 'METHOD[+MODIFIER...]' (UserError if unknown);
  a teacher-free objective's name (uskd) is a labels-only row: student.objective."""
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  from kd_research.methods import registry as method_registry  # pylint: disable=g-import-not-at-top
  method, *modifiers = row.split("+")
  if method in method_registry.teacher_free() and not modifiers:
    return {"student.objective": method}
  method_registry.parse(method)
  bad = [m for m in modifiers if m not in MODIFIERS]
  if bad:
    raise UserError(f"--methods row {row!r}: unknown modifier(s) {bad}; valid: "
                    f"{', '.join(MODIFIERS)} (e.g. kd+ctkd).")
  overrides = {"distill.method": method}
  for modifier in modifiers:
    overrides.update(MODIFIERS[modifier])
  return overrides


def run_method(opts, x, y, num_classes, method, strategy=None, profile_dir=None):
  """examples/s of --methods row ``method`` with a live teacher (and an op table); a
  teacher-free row trains the student alone with its objective."""
  del x, y, num_classes
  overrides = method_overrides(method)
  if "student.objective" in overrides:
    rate, _, _, table = run_resolved(opts, overrides, role="student", profile_dir=profile_dir,
                                     strategy=strategy)
    return rate, table
  from kd_research.methods import registry as method_registry  # pylint: disable=g-import-not-at-top
  registered = method_registry.methods()
  for name in method_registry.parse(overrides["distill.method"]):
    field = registered[name].bank_field  # Drawn from the examples: at most their count - 1.
    if field:
      overrides[f"distill.{name}.{field}"] = min(registered[name].defaults[field],
                                                  (opts.examples or 10**9) - 1)
  rate, _, _, table = run_resolved(opts, overrides, profile_dir=profile_dir, strategy=strategy)
  return rate, table


def _time_loop(opts, loop, iterator, profile_dir=None):
  """(median examples/s over the timed windows after a warm-up window, op table or None)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n = tf.constant(opts.window)
  loop(iterator, n).numpy()  # Warm-up (trace + first window).
  times = [time.perf_counter()]
  for _ in range(opts.windows):
    loop(iterator, n).numpy()
    times.append(time.perf_counter())
  table = None
  if profile_dir:
    from kd_research.report import tables  # pylint: disable=g-import-not-at-top
    table = tables.op_time_table(profiling.family_times(profiling.op_times(
        profiling.trace(lambda: loop(iterator, n).numpy(), profile_dir))))
  return _rate(times, opts.batch, opts.window), table


def bench_config(opts, overrides=(), role="distill", teachers=1, needed_steps=0):
  """The config of a bench row: a real run's config (config.base_config) with the bench's
  models, data size and batch, Adam at a constant 1e-3, KD alpha 0.7 / T 4 constant."""
  from kd_research import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  overrides = dict(overrides)
  config = config_lib.base_config()
  with config.unlocked():  # The data first: its size decides the splits below.
    config.dataset = overrides.pop("dataset", opts.dataset)
    config.image_size = overrides.pop("image_size", 0)
  available = datasets.open_source(datasets.data_spec(config)).train.num_examples
  with config.unlocked():
    config.global_batch_size = opts.batch
    # Small validation and test splits: the teachers are evaluated on them once per row.
    config.validation_size, config.test_size = min(1000, available // 4), 500
    config.train_size = min(opts.examples, available - config.validation_size)
    config.teacher = config_lib.model_config(opts.teacher, opts.teacher_width)
    # A long budget (the timed windows end long before it), or with ``needed_steps`` (the
    # view cache is built for the whole budget) just enough epochs to cover them.
    spe = max(1, (config.train_size or available - config.validation_size) // opts.batch)
    epochs = -(-needed_steps // spe) if needed_steps else 1000
    config.student = config_lib.model_config(opts.student, opts.student_width, epochs=epochs)
    config.optimizer.learning_rate = config_lib.schedule(1e-3)
    config.distill.alpha = config_lib.schedule(0.7)
    config.distill.temperature = config_lib.schedule(4.0)
    config.run.allow_weak_teacher = True  # Untrained teachers: speed only.
    for name in range(1, teachers):
      config.extra_teachers[f"t{name}"] = config_lib.model_config(opts.teacher,
                                                                  opts.teacher_width)
  for key, value in overrides.items():
    config = config_lib.replaced(config, **{key: value})
  run_spec.parse(config)
  return config


def _teacher_files(config, count, directory):
  """``count`` untrained teachers of config.teacher saved as .keras files (seeds 0, 1, ...)."""
  import keras  # pylint: disable=g-import-not-at-top
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  from kd_research.models import registry as model_registry  # pylint: disable=g-import-not-at-top
  splits = datasets.load_splits(datasets.data_spec(config))
  paths = []
  for k in range(count):
    keras.utils.set_random_seed(k)
    model = model_registry.build(config.teacher.model, splits.input_shape, splits.num_classes,
                                 config.teacher.width or None)
    paths.append(os.path.join(directory, f"teacher{k}.keras"))
    model.save(paths[-1])
  return paths


def run_resolved(opts, overrides=(), role="distill", teachers=1, profile_dir=None,
                 strategy=None):
  """One bench row of our loop: the run resolved exactly as ``distill`` (or ``train``)
  resolves it (train/resolve.py), its last phase's traced loop and the run's own training
  stream, timed over windows. Returns (examples/s, student FLOPs, teacher FLOPs, op table).
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  from kd_research.runtime import precision  # pylint: disable=g-import-not-at-top
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from kd_research.train import resolve  # pylint: disable=g-import-not-at-top
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  overrides = dict(overrides)
  views = overrides.get("distill.cache_teacher") and overrides.get("augment.ops")
  needed = opts.window * (opts.windows + 3) if views else 0  # warm-up, windows, profile
  config = bench_config(opts, overrides, role, teachers, needed)
  workdir = tempfile.mkdtemp(prefix="kd_bench_")
  paths = _teacher_files(config, teachers, workdir) if role == "distill" else ()
  precision.set_policy(config.mixed_precision)
  try:
    keras.utils.set_random_seed(config.student.seed)
    start = time.perf_counter()
    spec = run_spec.parse(config)
    run = resolve.resolve(spec, os.path.join(workdir, "run"), role, strategy,
                          datasets.load_splits(spec.data), tuple(paths), chief=True)
    if views:
      print(f"  the view cache of {needed} steps took {time.perf_counter() - start:.1f} s to "
            "build (with the teacher checks), once", flush=True)
    driver = end_to_end.make_driver(run, writer=None)
    loop = driver.loop_for(run.phases[-1] if role != "distill" else
                           next(p for p in run.phases if p.name == "distill"))
    rate, table = _time_loop(opts, loop, end_to_end.train_stream(run), profile_dir)
  finally:
    precision.set_policy("none")
  live = role == "distill" and not config.distill.cache_teacher
  teacher_flops = sum(forward_flops(m) for m in run.teachers.ensemble.models) if live else 0
  return rate, forward_flops(run.state.model), teacher_flops, table


def run_our_loop(opts, x, y, num_classes, precision="none", jit=False, cache=False, teachers=1,
                 student_only=False, profile_dir=None, strategy=None, augment=False, cohort=0):
  """(b)-(i), (k)-(n): our loop through the run resolver with the chosen options (OPTIONS);
  ``cohort`` > 0: a student cohort of deep mutual learning."""
  del x, y, num_classes
  overrides = {"mixed_precision": precision, "run.jit_compile": jit,
               "distill.cache_teacher": cache}
  if augment:
    overrides["augment.ops"] = ("flip", "crop")
  if cohort:
    overrides["student.cohort"] = cohort
  return run_resolved(opts, overrides, "student" if student_only else "distill", teachers,
                      profile_dir, strategy)
