-- POST /api/v1/orders: valid, distinct buy orders (escrowed), each with its own Idempotency-Key.
-- Environment: BENCH_SYMBOL, BENCH_KEYS (API keys, comma-separated), BENCH_RUN (unique per run).
-- Prices 0.50-0.90, below every resting ask, so each order is accepted, escrowed and rests.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
local symbol = os.getenv("BENCH_SYMBOL")
local run = os.getenv("BENCH_RUN")
local keys = {}
for k in string.gmatch(os.getenv("BENCH_KEYS"), "[^,]+") do keys[#keys + 1] = k end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local key = keys[((tid or 1) * 7919 + n) % #keys + 1]
  local price = string.format("%.2f", (50 + (n * 37 + (tid or 1)) % 41) / 100)
  local body = string.format(
    '{"instrument": "%s", "side": "buy", "quantity": 1000000, "price": "%s"}', symbol, price)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
    ["Idempotency-Key"] = string.format("bench-%s-%d-%d", run, tid or 1, n),
  }
  return wrk.format("POST", "/api/v1/orders", headers, body)
end
