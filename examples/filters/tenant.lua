-- An example `lua` filter (the twin of examples/wasm-filter): tenants, lanes and a counter.
--
--   filters:
--     - name: lua
--       config: { source: <this file's text>, counters: [ fast_lane ] }

-- Before routing: refuse calls without a tenant, tag the rest, steer `x-lane` callers.
function on_request(msg)
  if msg:get("x-boom") then error("x-boom asked this filter to fail") end
  if msg:get("x-spin") then while true do end end
  local tenant = msg:get("tenant")
  if tenant == nil then
    return msg:reply("unauthorized", "a tenant is required")
  end
  msg:set_state("tenant", tenant)
  msg:set("x-filtered-by", "lua:" .. tenant)
  local lane = msg:get("x-lane")
  if lane then msg:set_routing_key("lane", lane) end
end

-- Before the answer goes back: tell the caller which tenant it was served as.
function on_response(msg)
  local tenant = msg:state("tenant")
  if tenant then msg:set("x-tenant-echo", tenant) end
end

-- After the answer: count what the fast lane served.
function on_complete(msg)
  if msg:route() == "lane-fast" then count("fast_lane") end
end
