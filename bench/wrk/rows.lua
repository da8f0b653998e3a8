-- POST /bench/rows: the one-row ModelViewSet insert (the write ceiling).
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  n = n + 1
  return wrk.format(nil, "/bench/rows", nil, string.format('{"name": "row-%d", "value": %d}', n, n))
end
