-- Argo CD health check for ferry.dev HAPolicy (Lua 5.1).
-- Degraded, with the condition's reason and message: a covered HostPool is missing or the VM
-- selector is invalid (Ready=False), the storm guard holds fencing back (StormGuard=True), a fence
-- failed (FenceFailed=True), a host waits for a person to confirm it is off
-- (AwaitingConfirmation=True), or the pools cannot absorb the failures the policy tolerates
-- (FailoverCapacity=False). Healthy: Ready=True and none of those. Progressing: no verdict for the
-- current spec yet.
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
  return result("Progressing", "Waiting for the first host verdicts")
end
if ready.status == "False" then
  return result("Degraded", ready.reason .. ": " .. (ready.message or ""))
end
-- In order of urgency: each needs a person.
for _, kind in ipairs({ "StormGuard", "FenceFailed", "AwaitingConfirmation" }) do
  local c = find_condition(st.conditions, kind)
  if c ~= nil and c.status == "True" then
    return result("Degraded", kind .. ": " .. (c.message or ""))
  end
end
local capacity = find_condition(st.conditions, "FailoverCapacity")
if capacity ~= nil and capacity.status == "False" then
  return result("Degraded", "FailoverCapacity: " .. (capacity.message or ""))
end
return result("Healthy", ready.message or "")
