-- wrk script: POST a full Erathos body with a unique execution id per request.
-- Environment: BENCH_PATH, BENCH_TOKEN, BENCH_PREFIX, BENCH_SUFFIX, BENCH_NONCE (8 hex).
-- Ids are UUIDs "<nonce>-<thread>-4000-8000-<counter>", unique across threads and runs.

local path = os.getenv("BENCH_PATH") or "/webhooks/erathos"
local prefix = os.getenv("BENCH_PREFIX")
local suffix = os.getenv("BENCH_SUFFIX")
local nonce = os.getenv("BENCH_NONCE") or "00000000"
local headers = {
   ["Content-Type"] = "application/json",
   ["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or ""),
}
local threads = 0
local counter = 0

function setup(thread)
   thread:set("tid", threads)
   threads = threads + 1
end

function request()
   counter = counter + 1
   local id = string.format("%s-%04x-4000-8000-%012x", nonce, tid, counter)
   return wrk.format("POST", path, headers, prefix .. id .. suffix)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
