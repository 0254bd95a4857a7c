"""Input-pipeline benchmarks: commands that print figures (``bench --data``).

Every figure is measured in this process on images generated here (nothing downloaded):
  sources   the training stream alone, examples/s on one core (tf.data private thread pool
            of one thread, intra-op parallelism 1), for each source on the same JPEGs:
            in memory (the decoded eval views), folder:, tfrecord: (converted), tfds: (a
            TFDS dataset prepared here from the same files)
  training  training throughput, streamed (tfrecord:) vs in memory on the same pixels and
            models, for the student alone and for distillation with a live teacher: the
            ratios (the goal is >= 0.95; on a CPU the input's decode shares the cores with
            the step, so the smaller the step the lower the ratio)
  jpeg      the JPEG training pipeline (fused decode + inception crop + flip + resize to
            224) per core vs raw ``tf.io.decode_jpeg`` per core on the same files, and the
            cores that would feed ResNet-18 at 3,000 images/s
The generated JPEGs are smooth random fields plus noise (their size is printed): decode
cost depends on content, so the per-core figures are indicative of natural images, and
the ratios are the claim.
"""

import os
import tempfile
import time

import numpy as np

from kd_research.tools import bench_runs

RESNET18_RATE = 3000.0  # images/s a GPU trains ResNet-18 at (the sizing figure of docs/research.md)


def _images(n, height, width, seed=0):
  """``n`` uint8 images: smooth random fields (class-dependent brightness) plus noise."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (n, max(height // 16, 2), max(width // 16, 2), 3))
  smooth = tf.image.resize(coarse.astype(np.float32), [height, width]).numpy()
  noisy = smooth + rng.normal(0, 8, smooth.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def write_jpeg_folder(root, n, height, width, classes=10, quality=90, test=None):
  """A class-per-subdirectory folder of generated JPEGs; returns (root, mean file bytes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sizes = []
  for split, count in (("train", n), ("test", test or max(n // 10, classes))):
    images = _images(count, height, width, seed=len(split))
    for i, image in enumerate(images):
      directory = os.path.join(root, split, f"c{i % classes}")
      os.makedirs(directory, exist_ok=True)
      data = tf.io.encode_jpeg(image, quality=quality).numpy()
      sizes.append(len(data))
      with open(os.path.join(directory, f"{i:06d}.jpg"), "wb") as f:
        f.write(data)
  return root, float(np.mean(sizes))


def _config(dataset, image_size=0, view="center", data_dir=""):
  from kd_research import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.dataset, config.image_size, config.validation_size = dataset, image_size, 0
  config.data.train_view, config.data.tfds_dir = view, data_dir
  return config


def one_core(ds):
  """``ds`` on one thread: private pool of 1, no intra-op parallelism."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def stream_rate(ds, batch, batches, warmup=3):
  """Examples/s of iterating ``ds`` (batches of ``batch``) after ``warmup`` batches."""
  iterator = iter(ds)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batch * batches / (time.perf_counter() - start)


def _train_rate(split, batch, batches):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = split.train_fn(batch, seed=0)(tf.distribute.InputContext())
  return stream_rate(one_core(ds), batch, batches)


def _tfds_copy(folder, data_dir, size):
  """A TFDS dataset prepared here from the folder's files (JPEG bytes kept)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class BenchImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # No checksums file to look for (TFDS probes the module's package).

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in ("train", "test")}

    def _generate_examples(self, split):
      for label in range(10):
        directory = os.path.join(folder, split, f"c{label}")
        for name in sorted(os.listdir(directory)):
          yield f"{label}/{name}", {"image": os.path.join(directory, name), "label": label}

  BenchImages(data_dir=data_dir).download_and_prepare()
  return "tfds:bench_images"


def prepare(workdir, n, size):
  """{'folder': spec, 'tfrecord': spec} of ``n`` generated JPEGs of ``size``^2 (converted
  into 8 shards) and the mean JPEG size in bytes."""
  from kd_research.tools import tfrecord_shards  # pylint: disable=g-import-not-at-top
  folder, mean_bytes = write_jpeg_folder(os.path.join(workdir, "images"), n, size, size,
                                         test=max(n // 8, 600))
  tfrecord_shards.convert(f"folder:{folder}", os.path.join(workdir, "shards"), shards=8)
  return {"folder": f"folder:{folder}", "tfrecord": f"tfrecord:{workdir}/shards"}, mean_bytes


def source_rows(workdir, n, size, image_size, batch=128, batches=20):
  """[{'source', 'examples_per_second_per_core'}] on the same ``n`` JPEGs of ``size``^2."""
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  specs, mean_bytes = prepare(workdir, n, size)
  folder = specs["folder"].split(":", 1)[1]
  specs["tfds"] = _tfds_copy(folder, os.path.join(workdir, "tfds"), size)
  opened = {k: datasets.open_source(datasets.data_spec(_config(v, image_size, data_dir=f"{workdir}/tfds")))
            for k, v in specs.items()}
  rows = [{"source": "in memory (decoded)",
           "examples_per_second_per_core": _train_rate(
               datasets.in_memory(opened["folder"].train), batch, batches)}]
  for name, source in opened.items():
    rows.append({"source": specs[name].split(":")[0] + ":",
                 "examples_per_second_per_core": _train_rate(source.train, batch, batches)})
  print(f"  sources: {n} JPEGs of {size}x{size} ({mean_bytes / 1e3:.1f} KB each) -> "
        f"{image_size}x{image_size}", flush=True)
  return rows


def training_ratio(opts, specs, image_size):
  """Student training examples/s streamed (tfrecord:) and in memory on the same pixels."""
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  from kd_research.data import sources  # pylint: disable=g-import-not-at-top
  memory = datasets.in_memory(datasets.open_source(datasets.data_spec(_config(specs["folder"], image_size))).train)
  test = datasets.in_memory(datasets.open_source(datasets.data_spec(_config(specs["folder"], image_size))).test)
  sources.register(sources.Source("bench_in_memory", lambda _: sources.RawData(
      memory.images, memory.labels, test.images, test.labels, 10, "bench images in memory")))
  rates = {}
  for role in ("student", "distill"):
    for name, overrides in (("in memory", {"dataset": "bench_in_memory"}),
                            ("tfrecord: streamed", {"dataset": specs["tfrecord"],
                                                    "image_size": image_size})):
      key = f"{role}, {name}"
      rates[key] = bench_runs.run_resolved(opts, overrides, role=role)[0]
      print(f"  training {key}: {rates[key]:.0f} examples/s", flush=True)
  return rates


def jpeg_rows(workdir, n, height=375, width=500, batch=32, batches=8):
  """Raw decode vs the inception training pipeline, per core, on ImageNet-sized JPEGs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  folder, mean_bytes = write_jpeg_folder(os.path.join(workdir, "jpeg"), n, height, width,
                                         test=10)
  split = datasets.open_source(datasets.data_spec(_config(f"folder:{folder}", 224, "inception"))).train
  raw = tf.data.Dataset.from_tensor_slices(split.paths.astype(str)).repeat().map(
      lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3)).map(
          lambda image: tf.shape(image)).batch(batch)
  raw_rate = stream_rate(one_core(raw), batch, batches)
  pipeline_rate = _train_rate(split, batch, batches)
  print(f"  jpeg: {n} JPEGs of {width}x{height} ({mean_bytes / 1e3:.1f} KB each)", flush=True)
  return {"image": f"{width}x{height} JPEG, {mean_bytes / 1e3:.0f} KB",
          "raw_decode_per_core": raw_rate, "training_pipeline_per_core": pipeline_rate,
          "ratio": pipeline_rate / raw_rate,
          "cores_for_resnet18_at_3000": RESNET18_RATE / pipeline_rate}


def measure(opts):
  """Every input-pipeline figure; returns the report's 'data' section."""
  quick = opts.quick
  workdir = tempfile.mkdtemp(prefix="kd_bench_data_")
  rows = source_rows(workdir, 400 if quick else 4000, 64, 56)
  image_size = 32
  train_specs, _ = prepare(os.path.join(workdir, "train"), 2048 if quick else 8192, 36)
  rates = training_ratio(opts, train_specs, image_size)
  jpeg = jpeg_rows(workdir, 32 if quick else 256)
  ratios = {role: rates[f"{role}, tfrecord: streamed"] / rates[f"{role}, in memory"]
            for role in ("student", "distill")}
  return {"sources": rows, "training": rates, "training_ratio": ratios, "jpeg": jpeg,
          "models": {"teacher": f"{opts.teacher} w{opts.teacher_width}",
                     "student": f"{opts.student} w{opts.student_width}"},
          "workdir": workdir}


def _rss_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


class RssSampler:
  """Samples this process's resident memory every ``period`` seconds in a thread."""

  def __init__(self, period=0.5):
    import threading  # pylint: disable=g-import-not-at-top
    self.period, self.samples = period, []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    start = time.perf_counter()
    while not self._stop.is_set():
      self.samples.append((time.perf_counter() - start, _rss_mb()))
      self._stop.wait(self.period)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def write_png_shards(output, n, size=16, shards=32, test=10000, pool=4096):
  """``n`` training records (and ``test``) of ``size``^2 PNGs, from a pool of ``pool``
  generated images, as converter shards with a manifest; returns the shards' bytes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kd_research.tools import tfrecord_shards  # pylint: disable=g-import-not-at-top
  encoded = [tf.io.encode_png(image).numpy() for image in _images(pool, size, size)]
  os.makedirs(output, exist_ok=True)
  manifest = tfrecord_shards.new_manifest("generated", [str(c) for c in range(10)], 3)
  for split, count in (("train", n), ("test", test)):
    read = lambda i: (encoded[(i * 7919) % pool], i % 10)  # pylint: disable=cell-var-from-loop
    entries, _ = tfrecord_shards.write_split(output, split, read, count, shards, 0, 3, set(),
                                     check_decode=False)
    tfrecord_shards.add_split(manifest, output, split, entries, count)
  tfrecord_shards.write_manifest(manifest, output, {(size, size)})
  return sum(e["bytes"] for s in manifest["splits"].values() for e in s["shards"])


def memory_curve(n, size=16, batch=512):
  """Trains one epoch on ``n`` streamed records and samples RSS over the run."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kd_research import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp(prefix="kd_bench_memory_")
  shards = os.path.join(workdir, "shards")
  data_bytes = write_png_shards(shards, n, size)
  config = config_lib.base_config()
  config.dataset, config.validation_size, config.global_batch_size = (
      f"tfrecord:{shards}", 10000, batch)
  config.student = config_lib.model_config("mlp", width=64, epochs=1)
  config.run.steps_per_loop, config.run.log_every_steps = 100, 500
  config.run.checkpoint_every_steps = 10**6
  print(f"  memory: {n:,} records of {size}x{size} PNG ({data_bytes / 1e6:.0f} MB in shards, "
        f"{n * size * size * 3 / 1e6:.0f} MB decoded); training one epoch", flush=True)
  before = _rss_mb()
  start = time.perf_counter()
  with RssSampler() as sampler:
    result = end_to_end.train_and_evaluate(config, os.path.join(workdir, "run"), "student",
                                           tf.distribute.get_strategy())
  seconds = time.perf_counter() - start
  samples = sampler.samples
  step = max(1, len(samples) // 20)
  return {"examples": n, "image": f"{size}x{size}x3 PNG", "shard_bytes": data_bytes,
          "decoded_bytes": n * size * size * 3, "rss_before_mb": before,
          "rss_curve_mb": [(round(t, 1), round(r)) for t, r in samples[::step]],
          "rss_peak_mb": max(r for _, r in samples), "seconds": seconds,
          "steps": result["steps"], "examples_per_second": result["steps"] * batch / seconds,
          "workdir": workdir}
