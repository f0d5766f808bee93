-- wrk script: POST pre-signed, unique Stripe events read from a file (one "signature<TAB>body" per line).
-- Each wrk thread takes every Nth line, so no two threads send the same event.
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  requests = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local tab = line:find("\t", 1, true)
      requests[#requests + 1] = wrk.format("POST", "/webhooks/stripe", {
        ["Stripe-Signature"] = line:sub(1, tab - 1),
        ["Content-Type"] = "application/json",
      }, line:sub(tab + 1))
    end
    i = i + 1
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #requests then idx = 1 end
  return requests[idx]
end
