-- POST /api/v1/usage: batches of BENCH_USAGE_BATCH distinct usage events on one contract.
-- Environment: BENCH_USAGE (provider key|buyer slug|contract id|timestamp), BENCH_RUN.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
local key, buyer, contract, ts = string.match(os.getenv("BENCH_USAGE"), "([^|]+)|([^|]+)|([^|]+)|([^|]+)")
local batch = tonumber(os.getenv("BENCH_USAGE_BATCH"))
local run = os.getenv("BENCH_RUN")
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local events = {}
  for i = 1, batch do
    events[i] = string.format(
      '{"event_id": "bench-%s-%d-%d-%d", "buyer": "%s", "contract": %s, "timestamp": "%s", ' ..
      '"usage": {"prompt_tokens": 120, "completion_tokens": 40}}', run, tid or 1, n, i, buyer, contract, ts)
  end
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  return wrk.format("POST", "/api/v1/usage", headers, '{"events": [' .. table.concat(events, ", ") .. ']}')
end
