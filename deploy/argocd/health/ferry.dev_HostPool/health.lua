-- Argo CD health check for ferry.dev HostPool (Lua 5.1).
-- Healthy: Ready=True (at least one host takes VMs; the message names hosts that do not).
-- Degraded: Ready=False (no host selected, none reachable, invalid selector). Progressing: no
-- verdict for the current spec yet.
local hs = {}

local function result(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local st = obj.status
if st == nil then
  return result("Progressing", "Waiting for the ferry controller")
end
local generation = obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  return result("Progressing", "Waiting for the ferry controller to observe generation " .. generation)
end
local ready = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready == nil then
  return result("Progressing", "Waiting for the first host probe")
end
local message = ready.message or ""
if ready.status == "True" then
  return result("Healthy", message)
end
if ready.status == "False" then
  return result("Degraded", message)
end
return result("Progressing", message)
