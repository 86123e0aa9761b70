import Addressing

/// One page of `@show_list`: which entries it shows, and the line under them.
///
/// The entries are given by position in list order (`id(position)` for `0..<count`), so a
/// page costs only its own entries when there is no prefix, and one pass over the IDs
/// (`hasPrefix`, copying nothing) when there is one. A prefix matches as text, character by
/// character, so "é" matches however it is encoded, and "e" does not match "é".
struct ListPage: Hashable, Sendable {
    /// The positions (in list order) of the entries to show, in order.
    var positions: [Int]
    /// The line after the entries: where this page is and how to get the next one. `nil`
    /// when the whole list fits one page and no prefix was given: such a list prints as it
    /// always did.
    var footer: String?

    /// Page `page` (from 1) of the entries whose ID starts with `prefix` (all when `nil`),
    /// `pageSize` entries a page.
    static func make(count: Int, id: (Int) -> ClientID, prefix: String?, page: Int, pageSize: Int) -> ListPage {
        let size = max(1, pageSize)
        let requested = max(1, page)
        let (skip, overflow) = (requested - 1).multipliedReportingOverflow(by: size)
        let first = overflow ? Int.max : skip
        var positions: [Int] = []
        let total: Int
        if let prefix {
            var matches = 0
            for position in 0..<count where id(position).rawValue.hasPrefix(prefix) {
                if matches >= first, positions.count < size { positions.append(position) }
                matches += 1
            }
            total = matches
        } else {
            total = count
            if first < count { positions = Array(first..<(first + min(size, count - first))) }
        }
        return ListPage(positions: positions,
                        footer: footer(total: total, shown: positions.count, first: first, prefix: prefix, page: requested, size: size))
    }

    /// The line under a page: `first` is the index of its first entry among `total`.
    static func footer(total: Int, shown: Int, first: Int, prefix: String?, page: Int, size: Int) -> String? {
        let pages = max(1, total / size + (total % size == 0 ? 0 : 1))
        let matching = prefix.map { " starting with \($0)" } ?? ""
        if total == 0, let prefix { return "-- no ID starts with \(prefix) --" }
        if shown == 0 {
            let what = prefix == nil ? counted(total, "client") : "\(total)\(matching)"
            return "-- no page \(page): \(what), \(counted(pages, "page")) of \(size) --"
        }
        if prefix == nil, pages == 1 { return nil }
        let range = shown == 1 ? "\(first + 1)" : "\(first + 1)-\(first + shown)"
        let position = "\(range) of \(total)\(matching)"
        let isLast = first + shown >= total
        switch (prefix, isLast) {
        case (nil, false):
            return "-- \(position); @show_list \(page + 1) for the next page, @show_list <prefix> to filter --"
        case (nil, true):
            return "-- \(position), the last page; @show_list <prefix> to filter --"
        case (let prefix?, false):
            return "-- \(position); @show_list \(prefix) \(page + 1) for the next page --"
        case (_?, true):
            return pages == 1 ? "-- \(position) --" : "-- \(position), the last page --"
        }
    }

    private static func counted(_ n: Int, _ noun: String) -> String {
        "\(n) \(noun)\(n == 1 ? "" : "s")"
    }
}
