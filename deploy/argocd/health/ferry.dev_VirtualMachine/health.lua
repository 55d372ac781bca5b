-- Argo CD health check for ferry.dev VirtualMachine (Lua 5.1).
-- Degraded: Failed or Unknown (host unreachable), a wait only a person can end (the Ready
-- reasons in `needs_person`), or Ready=False outside a transition. Healthy: Ready=True, stopped by
-- design (Halted, Manual, RerunOnFailure after the guest shut itself down), or Halted and never
-- placed. Suspended: paused on request (ferry.dev/paused). Progressing: no status yet, status
-- older than the spec, or a transition.
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

-- Ready reasons that stay until someone changes the spec, a referenced object or a host.
local needs_person = {
  HostPoolNotFound = true, ClassNotFound = true, ImageNotFound = true, VolumeNotFound = true,
  CloudInitSecretNotFound = true, CloudInitInvalid = true, ChecksumMismatch = true,
  ImportFailed = true, DiskLocked = true, InvalidSpec = true, RestartLimitReached = true,
  HostMisconfigured = true, CloneSourceNotFound = true, CloneSourceElsewhere = true,
  CloneSourceRunning = true, DuplicateMAC = true, HostPoolRefused = true,
  BootFileNotAllowed = true, DiskNotAllowed = true, ImageRefused = true, ImportRefused = true,
  ArchiveMemberRefused = true,
  ReleaseNotAllowed = true,
  AdoptionBlocked = true,
}

local st = obj.status
if st == nil then
  return result("Progressing", "Waiting for the ferry controller")
end
local generation = obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  return result("Progressing", "Waiting for the ferry controller to observe generation " .. generation)
end

local phase = st.phase or ""
local ready = find_condition(st.conditions, "Ready")
local message = ""
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  message = ready.message
elseif phase ~= "" then
  message = "Phase " .. phase
end
local strategy = "Always"
if obj.spec ~= nil and obj.spec.runStrategy ~= nil then
  strategy = obj.spec.runStrategy
end

if phase == "Failed" or phase == "Unknown" then
  return result("Degraded", message)
end
if ready ~= nil and ready.status == "False" and ready.reason == "PausedOnRequest" then
  return result("Suspended", message)
end
if ready ~= nil and ready.status == "False" and needs_person[ready.reason] then
  return result("Degraded", message)
end
if strategy == "Halted" and st.host == nil and phase ~= "Terminating" then
  -- Never placed, and not meant to run: nothing is missing.
  return result("Healthy", message)
end
local transitions = {
  [""] = true, Pending = true, Provisioning = true, Starting = true, Stopping = true,
  Migrating = true, Terminating = true,
}
if transitions[phase] then
  return result("Progressing", message)
end
if ready ~= nil and ready.status == "True" then
  return result("Healthy", message)
end
if phase == "Stopped" then
  if strategy == "Halted" or strategy == "Manual" or (strategy == "RerunOnFailure" and st.stoppedByGuest == true) then
    return result("Healthy", message)
  end
  -- Always, or RerunOnFailure after a crash: the controller starts it again.
  return result("Progressing", message)
end
if ready ~= nil and ready.status == "False" then
  return result("Degraded", message)
end
return result("Progressing", message)
