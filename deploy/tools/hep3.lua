-- HEP3 (Homer Encapsulation Protocol v3) dissector for Wireshark/tshark, which do not ship one.
--
--   tshark -X lua_script:deploy/tools/hep3.lua -r capture.pcap -Y hep3
--   tshark -X lua_script:deploy/tools/hep3.lua -i lo -f 'udp port 9060' -O hep3
--
-- Decodes the relay's HEP export (`relay --homer ADDR`): every chunk of the generic vendor
-- (IP family and protocol, addresses, ports, time, protocol type, capture agent ID, correlation
-- ID, payload) and hands the payload (RTCP or MOS report JSON) to Wireshark's JSON dissector.
-- Registered on UDP and TCP port 9060 (HEP's customary port); `-d udp.port==N,hep3` for others.

local hep3 = Proto("hep3", "Homer Encapsulation Protocol v3")

local f = {
  length = ProtoField.uint16("hep3.length", "Total length"),
  ip_family = ProtoField.uint8("hep3.ip_family", "IP family", base.DEC, { [2] = "IPv4", [10] = "IPv6" }),
  ip_proto = ProtoField.uint8("hep3.ip_proto", "IP protocol"),
  src_ip4 = ProtoField.ipv4("hep3.src_ip4", "Source IPv4"),
  dst_ip4 = ProtoField.ipv4("hep3.dst_ip4", "Destination IPv4"),
  src_ip6 = ProtoField.ipv6("hep3.src_ip6", "Source IPv6"),
  dst_ip6 = ProtoField.ipv6("hep3.dst_ip6", "Destination IPv6"),
  src_port = ProtoField.uint16("hep3.src_port", "Source port"),
  dst_port = ProtoField.uint16("hep3.dst_port", "Destination port"),
  ts_sec = ProtoField.uint32("hep3.ts_sec", "Timestamp (s)"),
  ts_usec = ProtoField.uint32("hep3.ts_usec", "Timestamp (µs)"),
  proto_type = ProtoField.uint8("hep3.proto_type", "Protocol type", base.HEX,
    { [1] = "SIP", [5] = "RTCP JSON", [0x22] = "MOS report JSON", [0x23] = "MOS short report" }),
  capture_id = ProtoField.uint32("hep3.capture_id", "Capture agent ID"),
  keepalive = ProtoField.uint16("hep3.keepalive", "Keep-alive timer"),
  auth_key = ProtoField.string("hep3.auth_key", "Authentication key"),
  payload = ProtoField.string("hep3.payload", "Payload"),
  correlation_id = ProtoField.string("hep3.correlation_id", "Correlation ID"),
  chunk_type = ProtoField.uint16("hep3.chunk_type", "Chunk type", base.HEX),
  vendor = ProtoField.uint16("hep3.vendor", "Vendor", base.HEX),
}
hep3.fields = f

local ef_short = ProtoExpert.new("hep3.short", "Chunk runs past the packet", expert.group.MALFORMED, expert.severity.ERROR)
hep3.experts = { ef_short }

local json = Dissector.get("json")

local by_type = {
  [0x0001] = f.ip_family, [0x0002] = f.ip_proto, [0x0003] = f.src_ip4, [0x0004] = f.dst_ip4,
  [0x0005] = f.src_ip6, [0x0006] = f.dst_ip6, [0x0007] = f.src_port, [0x0008] = f.dst_port,
  [0x0009] = f.ts_sec, [0x000a] = f.ts_usec, [0x000b] = f.proto_type, [0x000c] = f.capture_id,
  [0x000d] = f.keepalive, [0x000e] = f.auth_key, [0x0011] = f.correlation_id,
}

function hep3.dissector(tvb, pinfo, tree)
  if tvb:len() < 6 or tvb(0, 4):string() ~= "HEP3" then
    return 0
  end
  pinfo.cols.protocol = "HEP3"
  local total = tvb(4, 2):uint()
  local t = tree:add(hep3, tvb(0, math.min(total, tvb:len())))
  t:add(f.length, tvb(4, 2))
  local off = 6
  local proto_name = ""
  while off + 6 <= math.min(total, tvb:len()) do
    local vendor = tvb(off, 2):uint()
    local kind = tvb(off + 2, 2):uint()
    local len = tvb(off + 4, 2):uint()
    if len < 6 or off + len > tvb:len() then
      t:add_proto_expert_info(ef_short)
      break
    end
    local value = tvb(off + 6, len - 6)
    if vendor ~= 0 then
      local c = t:add(f.chunk_type, tvb(off + 2, 2))
      c:add(f.vendor, tvb(off, 2))
    elseif kind == 0x000f then
      t:add(f.payload, value)
      if json ~= nil and len > 6 then
        json:call(value:tvb(), pinfo, tree)
      end
    elseif by_type[kind] ~= nil then
      t:add(by_type[kind], value)
      if kind == 0x000b then
        local p = value:uint()
        proto_name = (p == 5 and "RTCP JSON") or (p == 0x22 and "MOS report") or string.format("type 0x%02x", p)
      end
    else
      t:add(f.chunk_type, tvb(off + 2, 2))
    end
    off = off + len
  end
  pinfo.cols.info = "HEP3 " .. proto_name
  return total
end

DissectorTable.get("udp.port"):add(9060, hep3)
DissectorTable.get("tcp.port"):add(9060, hep3)
