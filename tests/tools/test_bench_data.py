"""The input-pipeline benchmark's rows run on a few generated images (no timing checked)."""

from kd_research.report import tables
from kd_research.tools import bench_data


def test_source_and_jpeg_rows_measure_every_source(tmp_path):
  rows = bench_data.source_rows(str(tmp_path / "sources"), 60, 24, 16, batch=8, batches=2)
  assert [r["source"] for r in rows] == ["in memory (decoded)", "folder:", "tfrecord:", "tfds:"]
  assert all(r["examples_per_second_per_core"] > 0 for r in rows)
  jpeg = bench_data.jpeg_rows(str(tmp_path), 10, 60, 80, batch=4, batches=2)  # 10 classes
  assert jpeg["raw_decode_per_core"] > 0 and jpeg["training_pipeline_per_core"] > 0
  data = {"sources": rows, "training": {"student, in memory": 2.0},
          "training_ratio": {"student": 0.5}, "jpeg": jpeg}
  table = tables.data_bench_table(data)
  assert "| tfds: |" in table and "| student: streamed / in memory | 0.500 |" in table


def test_rss_sampler_records_the_resident_memory():
  import time
  with bench_data.RssSampler(period=0.01) as sampler:
    time.sleep(0.05)
  assert len(sampler.samples) >= 2 and all(r > 0 for _, r in sampler.samples)
