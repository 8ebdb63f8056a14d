-- wrk script for bench/soak.sh: counts responses by status code. At the end it prints one
-- line "status CODE COUNT" per status seen, summed over wrk's threads.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}  -- global: done() reads it from each thread with thread:get
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts") or {}) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %d %d\n", status, n))
  end
end
