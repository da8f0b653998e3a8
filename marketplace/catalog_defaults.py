"""Default catalog from public figures (prices in the settlement currency, CNY).

- Power: H100 SXM and H200 SXM are rated 700 W, B200 1,000 W, MI300X 750 W; TPU v7 and
  Ascend 910C are estimates from public reporting (about 960 W and 600 W).
- Electricity: western China (Gansu, Ningxia, Inner Mongolia data-centre parks) about
  0.30 CNY/kWh; eastern China about 0.65; US about 0.13 USD (0.95 CNY); Germany about
  0.19 EUR (1.40 CNY); Singapore about 1.10 CNY. So the west of China is a third to a
  fifth of US and European prices.
- Throughput: reference output tokens/s per accelerator at a serving batch size, for a
  frontier-size model, a ~70B standard model, a ~8B economy model, and batch (large batches,
  relaxed latency). Relative speeds: H200 1.4x H100, B200 2.5x, MI300X 1.2x, TPU v7 2x,
  Ascend 910C 0.8x.
"""

from decimal import Decimal as D

TIERS = [
    # code, name, p95 TTFT ms, output weight, cached weight, unused share, sort
    ("frontier", "Frontier", 800, D("4"), D("0.1"), D("0.5"), 1),
    ("standard", "Standard", 1500, D("3"), D("0.25"), D("0.25"), 2),
    ("economy", "Economy", 3000, D("2"), D("0.25"), D("0.1"), 3),
    ("batch", "Batch (24 h)", 60000, D("2"), D("0.5"), D("0"), 4),
]

HARDWARE = [
    ("h100", "NVIDIA H100 SXM", 700, D("1.0")),
    ("h200", "NVIDIA H200 SXM", 700, D("1.4")),
    ("b200", "NVIDIA B200", 1000, D("2.5")),
    ("mi300x", "AMD Instinct MI300X", 750, D("1.2")),
    ("tpu-v7", "Google TPU v7 (Ironwood)", 960, D("2.0")),
    ("ascend-910c", "Huawei Ascend 910C", 600, D("0.8")),
]

H100_TOKENS_PER_SECOND = {"frontier": 400, "standard": 1500, "economy": 5000, "batch": 2500}

REGIONS = [
    ("cn-west-1", "China West (Ningxia)", D("0.30")),
    ("cn-east-1", "China East (Shanghai)", D("0.65")),
    ("us-east-1", "US East (Virginia)", D("0.95")),
    ("eu-central-1", "EU Central (Frankfurt)", D("1.40")),
    ("ap-southeast-1", "Asia Pacific (Singapore)", D("1.10")),
]

# Typical prices per 1M tokens, used by the demo seed around which it places orders.
REFERENCE_PRICE = {"frontier": D("8.00"), "standard": D("2.00"), "economy": D("0.50"), "batch": D("0.30")}
