-- Segmentation on arrival: when a CT series becomes stable (no new instance for StableAge seconds),
-- ask swinxseg to segment it (POST /v1/dicomweb/jobs). swinxseg then fetches the series over
-- WADO-RS and stores the RTSTRUCT (and SEG) back into the same study over STOW-RS.
--
-- Never a job for: other modalities (our own RTSTRUCT/SEG outputs included) and localizer/scout
-- series. The same series reported stable twice makes one job: swinxseg returns the existing job
-- for the same series UID + model checksum + outputs.
--
-- Environment (of the Orthanc process): SWINXSEG_URL (default http://swinxseg:8000),
-- SWINXSEG_API_KEY (sent as X-API-Key when set), SWINXSEG_OUTPUTS (default rtstruct; e.g. rtstruct,seg).

local SERVICE_URL = os.getenv('SWINXSEG_URL') or 'http://swinxseg:8000'
local API_KEY = os.getenv('SWINXSEG_API_KEY') or ''
local OUTPUTS = os.getenv('SWINXSEG_OUTPUTS') or 'rtstruct'

local function split(text)
  local items = {}
  for item in string.gmatch(text, '([^,%s]+)') do
    table.insert(items, item)
  end
  return items
end

local function is_localizer(seriesId)
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local first = series['Instances'][1]
  if first == nil then
    return true
  end
  local tags = ParseJson(RestApiGet('/instances/' .. first .. '/simplified-tags'))
  local imageType = string.upper(tags['ImageType'] or '')
  return string.find(imageType, 'LOCALIZER', 1, true) ~= nil or string.find(imageType, 'SCOUT', 1, true) ~= nil
end

function OnStableSeries(seriesId, tags, metadata)
  if (tags['Modality'] or '') ~= 'CT' then
    return
  end
  if is_localizer(seriesId) then
    print('swinxseg: series ' .. (tags['SeriesInstanceUID'] or seriesId) .. ' is a localizer; not segmented')
    return
  end
  local study = ParseJson(RestApiGet('/series/' .. seriesId .. '/study'))
  local body = {
    study_uid = study['MainDicomTags']['StudyInstanceUID'],
    series_uid = tags['SeriesInstanceUID'],
    outputs = split(OUTPUTS),
  }
  local headers = { ['Content-Type'] = 'application/json' }
  if API_KEY ~= '' then
    headers['X-API-Key'] = API_KEY
  end
  local answer = HttpPost(SERVICE_URL .. '/v1/dicomweb/jobs', DumpJson(body, true), headers)
  print('swinxseg: series ' .. body['series_uid'] .. ' -> ' .. tostring(answer))
end
