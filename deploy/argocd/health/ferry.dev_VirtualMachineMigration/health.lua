-- Argo CD health check for ferry.dev VirtualMachineMigration (Lua 5.1), by phase:
-- Pending, Scheduled, Running: Progressing; Succeeded: Healthy; Failed, Cancelled: Degraded.
local hs = {}

local function result(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local st = obj.status
if st == nil or st.phase == nil then
  return result("Progressing", "Waiting for the ferry controller")
end
local route = ""
if st.source ~= nil and st.target ~= nil then
  route = " from " .. st.source .. " to " .. st.target
elseif st.source ~= nil then
  route = " from " .. st.source
end
local phase = st.phase
if phase == "Succeeded" then
  return result("Healthy", "Moved" .. route)
end
if phase == "Failed" or phase == "Cancelled" then
  local message = phase .. route
  if st.message ~= nil and st.message ~= "" then
    message = message .. ": " .. st.message
  end
  return result("Degraded", message)
end
if phase == "Pending" or phase == "Scheduled" or phase == "Running" then
  return result("Progressing", phase .. route)
end
return result("Progressing", "Phase " .. phase)
