import AttestationCore
import Foundation

extension EKRoots {
    /// The pinned roots as DER certificates, decoded once.
    public static let pinnedDER: [Data] = pinned.flatMap { entry in
        (try? TrustRoots.parse(pem: entry.pem, source: entry.name))?.map(\.der) ?? []
    }
}
