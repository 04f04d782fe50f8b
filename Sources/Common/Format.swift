import Foundation

/// Human-readable quantities for progress lines and reports.
public enum Format {
    /// 1.5 KiB, 12.3 MiB, 2.79 GiB.
    public static func bytes(_ b: Double) -> String {
        let gib = 1_073_741_824.0, mib = 1_048_576.0
        if b >= gib { return String(format: "%.2f GiB", b / gib) }
        if b >= mib { return String(format: "%.1f MiB", b / mib) }
        return String(format: "%.1f KiB", b / 1024)
    }

    /// 42s, 3m07s, 2h05m.
    public static func duration(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "?" }
        let t = Int(s.rounded())
        if t >= 3600 { return "\(t / 3600)h\(String(format: "%02d", t % 3600 / 60))m" }
        if t >= 60 { return "\(t / 60)m\(String(format: "%02d", t % 60))s" }
        return "\(t)s"
    }

    /// 1.5M, 20G, 3.2P: a count with an SI suffix; three significant digits, or (`spacing`: the distance between
    /// neighbouring values, as an axis's ticks) as many decimals as that spacing needs, at most three.
    public static func si(_ v: Double, spacing: Double? = nil) -> String {
        let suffixes = ["", "k", "M", "G", "T", "P", "E", "Z"]
        let exponent = v == 0 || !v.isFinite ? 0 : min(suffixes.count - 1, max(0, Int(floor(log10(abs(v)) / 3))))
        let scale = pow(1000, Double(exponent)), scaled = v / scale
        let decimals = spacing.map { min(3, max(0, -Int(floor(log10($0 / scale) + 1e-9)))) }
            ?? max(0, 2 - Int(floor(log10(max(abs(scaled), 1)))))
        return String(format: "%.*f", Int32(decimals), scaled) + suffixes[exponent]
    }

    /// `s` padded with spaces to `width` characters: on the right (`left`-aligned, for names) or on the left (for
    /// numbers). String(format:)'s %-13@ does not pad Swift strings.
    public static func column(_ s: String, _ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return left ? s + fill : fill + s
    }
}
