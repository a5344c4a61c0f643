-- wrk script for the cutover benchmark (wrk -s count.lua).
-- Counts 2xx and non-2xx answers per status code in every thread, and at the end prints ONE line:
--   BENCH_RESULT {"requests":N,"ok_2xx":N,"non_2xx":N,"by_status":{"502":N},"errors":{...},...}
-- which bench.py parses. wrk calls done() also when it is stopped early with SIGINT.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   ok_2xx = 0
   non_2xx = 0
   by_status = {}
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok_2xx = ok_2xx + 1
   else
      non_2xx = non_2xx + 1
      local k = tostring(status)
      by_status[k] = (by_status[k] or 0) + 1
   end
end

function done(summary, latency, requests)
   local ok, bad, codes = 0, 0, {}
   for _, t in ipairs(threads) do
      ok = ok + t:get("ok_2xx")
      bad = bad + t:get("non_2xx")
      local s = t:get("by_status")
      if s then
         for k, v in pairs(s) do codes[k] = (codes[k] or 0) + v end
      end
   end
   local parts = {}
   for k, v in pairs(codes) do table.insert(parts, string.format('"%s":%d', k, v)) end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"ok_2xx":%d,"non_2xx":%d,"by_status":{%s},' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
      '"duration_us":%d,"latency_us":{"p50":%d,"p99":%d,"max":%d}}\n',
      summary.requests, ok, bad, table.concat(parts, ","),
      e.connect, e.read, e.write, e.timeout, e.status,
      summary.duration, latency:percentile(50), latency:percentile(99), latency.max))
end
