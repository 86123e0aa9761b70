import Addressing

/// The default route's gateway, where PCP and NAT-PMP servers are (RFC 6887 §8.1: the PCP
/// server is the default router unless configured otherwise).
public enum DefaultRoute {
    /// Parses Linux's `/proc/net/route` text: the gateway of the first up (`RTF_UP`) route
    /// to 0.0.0.0/0 that has one (`RTF_GATEWAY`); `nil` when there is none or the text is
    /// not that table. Fields are hexadecimal in the kernel's (little-endian) byte order.
    public static func gateway(procNetRoute text: String) -> IPv4Address? {
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 8,
                  let destination = UInt32(fields[1], radix: 16), let gateway = UInt32(fields[2], radix: 16),
                  let flags = UInt16(fields[3], radix: 16), let mask = UInt32(fields[7], radix: 16)
            else { continue }
            guard destination == 0, mask == 0, flags & 0x1 != 0, flags & 0x2 != 0, gateway != 0 else { continue }
            return IPv4Address(bits: gateway.byteSwapped)
        }
        return nil
    }
}
