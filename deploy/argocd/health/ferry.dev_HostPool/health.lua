-- Argo CD health check for ferry.dev HostPool (Lua 5.1).
-- Healthy: Ready=True (at least one host takes VMs; the message names hosts that do not).
-- Degraded: Ready=False (no host selected, none reachable, invalid selector, a URI or directory
-- ferry refuses), or an evacuation
-- that cannot finish (Evacuating reason Blocked: VMs that cannot move). Progressing: no verdict
-- for the current spec yet, or a host being evacuated.
local hs = {}

local function result(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local function find_condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local st = obj.status
if st == nil then
  return result("Progressing", "Waiting for the ferry controller")
end
local generation = obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  return result("Progressing", "Waiting for the ferry controller to observe generation " .. generation)
end
local ready = find_condition(st.conditions, "Ready")
if ready == nil then
  return result("Progressing", "Waiting for the first host probe")
end
local message = ready.message or ""
if ready.status == "False" then
  return result("Degraded", message)
end
if ready.status ~= "True" then
  return result("Progressing", message)
end
local evacuating = find_condition(st.conditions, "Evacuating")
if evacuating ~= nil and evacuating.status == "True" then
  if evacuating.reason == "Blocked" then
    return result("Degraded", evacuating.message or "")
  end
  return result("Progressing", evacuating.message or "")
end
return result("Healthy", message)
