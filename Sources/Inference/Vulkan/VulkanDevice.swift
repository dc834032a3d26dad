import CVulkan
import Foundation

/// What a Vulkan device says about itself: enough for `ccinfer devices` and for choosing one.
public struct VulkanDeviceInfo: Sendable, Equatable {
    public let index: Int
    public let name: String
    public let type: String
    public let apiVersion: String
    public let driverName: String
    public let driverInfo: String
    public let vendorID: UInt32
    /// Bytes of device-local memory (the largest device-local heap).
    public let deviceLocalBytes: UInt64
    /// Bytes of all heaps together.
    public let totalBytes: UInt64
    public let hasComputeQueue: Bool
    public let maxStorageBufferRange: UInt32
    /// The most invocations one workgroup may have, in all and along x and y (at least 128, 128
    /// and 128 on every Vulkan device).
    public let maxWorkgroupInvocations: UInt32
    public let maxWorkgroupSizeX: UInt32
    public let maxWorkgroupSizeY: UInt32

    public var summary: String {
        let gib = Double(deviceLocalBytes) / Double(1 << 30)
        return
            "\(index): \(name) (\(type), Vulkan \(apiVersion), driver \(driverName)\(driverInfo.isEmpty ? "" : " \(driverInfo)"), "
            + String(format: "%.1f GiB device-local", gib) + (hasComputeQueue ? "" : ", no compute queue") + ")"
    }
}

func vkCheck(_ result: VkResult, _ what: String) throws(InferenceError) {
    guard result == VK_SUCCESS else { throw InferenceError(.vulkanFailed, "\(what) failed: \(vkResultName(result))") }
}

func vkResultName(_ r: VkResult) -> String {
    let names: [Int32: String] = [
        -1: "VK_ERROR_OUT_OF_HOST_MEMORY", -2: "VK_ERROR_OUT_OF_DEVICE_MEMORY", -3: "VK_ERROR_INITIALIZATION_FAILED",
        -4: "VK_ERROR_DEVICE_LOST", -5: "VK_ERROR_MEMORY_MAP_FAILED", -6: "VK_ERROR_LAYER_NOT_PRESENT",
        -7: "VK_ERROR_EXTENSION_NOT_PRESENT", -8: "VK_ERROR_FEATURE_NOT_PRESENT", -9: "VK_ERROR_INCOMPATIBLE_DRIVER",
        -10: "VK_ERROR_TOO_MANY_OBJECTS", -11: "VK_ERROR_FORMAT_NOT_SUPPORTED", -13: "VK_ERROR_UNKNOWN",
        2: "VK_TIMEOUT",
    ]
    return "\(names[r.rawValue] ?? "VkResult") (\(r.rawValue))"
}

/// The Vulkan instance: loader, drivers, physical devices.
public final class VulkanInstance: @unchecked Sendable {
    let handle: VkInstance

    /// Creates an instance for Vulkan 1.1. No driver (`VK_ERROR_INCOMPATIBLE_DRIVER`) or no
    /// loader is `vulkan.no-driver`, said in words a GPU owner can act on.
    public init() throws(InferenceError) {
        var instance: VkInstance?
        let result: VkResult = "ccinfer".withCString { name in
            var app = VkApplicationInfo()
            app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO
            app.pApplicationName = name
            app.applicationVersion = 1
            app.pEngineName = name
            app.engineVersion = 1
            app.apiVersion = (1 << 22) | (1 << 12)
            return withUnsafePointer(to: &app) { appPointer in
                var info = VkInstanceCreateInfo()
                info.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
                info.pApplicationInfo = appPointer
                return vkCreateInstance(&info, nil, &instance)
            }
        }
        switch result {
        case VK_SUCCESS: break
        case VK_ERROR_INCOMPATIBLE_DRIVER, VK_ERROR_INITIALIZATION_FAILED:
            throw InferenceError(
                .vulkanNoDriver,
                "no usable Vulkan driver (\(vkResultName(result))): install your GPU's Vulkan driver, "
                    + "or mesa-vulkan-drivers for a CPU device; VK_ICD_FILENAMES selects a driver manifest")
        default:
            throw InferenceError(.vulkanNoDriver, "vkCreateInstance failed: \(vkResultName(result))")
        }
        handle = instance!
    }

    deinit { vkDestroyInstance(handle, nil) }

    func physicalDevices() throws(InferenceError) -> [VkPhysicalDevice] {
        var count: UInt32 = 0
        try vkCheck(vkEnumeratePhysicalDevices(handle, &count, nil), "vkEnumeratePhysicalDevices")
        var devices = [VkPhysicalDevice?](repeating: nil, count: Int(count))
        try vkCheck(vkEnumeratePhysicalDevices(handle, &count, &devices), "vkEnumeratePhysicalDevices")
        return devices.prefix(Int(count)).compactMap { $0 }
    }

    /// Every device the loader reports, in its order (the order `--device N` counts in).
    public func devices() throws(InferenceError) -> [VulkanDeviceInfo] {
        try physicalDevices().enumerated().map { index, device in Self.describe(device, index: index) }
    }

    static func describe(_ device: VkPhysicalDevice, index: Int) -> VulkanDeviceInfo {
        var props = VkPhysicalDeviceProperties()
        vkGetPhysicalDeviceProperties(device, &props)
        let name = withUnsafeBytes(of: props.deviceName) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let api = props.apiVersion
        let apiText = "\(api >> 22 & 0x7F).\(api >> 12 & 0x3FF).\(api & 0xFFF)"
        var driverName = ""
        var driverInfo = ""
        if api >= (1 << 22) | (2 << 12) {
            var driver = VkPhysicalDeviceDriverProperties()
            driver.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES
            withUnsafeMutablePointer(to: &driver) { driverPointer in
                var props2 = VkPhysicalDeviceProperties2()
                props2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2
                props2.pNext = UnsafeMutableRawPointer(driverPointer)
                vkGetPhysicalDeviceProperties2(device, &props2)
            }
            driverName = withUnsafeBytes(of: driver.driverName) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            driverInfo = withUnsafeBytes(of: driver.driverInfo) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
        } else {
            driverName = "driver version \(props.driverVersion)"
        }
        let type =
            switch props.deviceType {
            case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: "discrete GPU"
            case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: "integrated GPU"
            case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: "virtual GPU"
            case VK_PHYSICAL_DEVICE_TYPE_CPU: "CPU"
            default: "other"
            }
        var memory = VkPhysicalDeviceMemoryProperties()
        vkGetPhysicalDeviceMemoryProperties(device, &memory)
        var deviceLocal: UInt64 = 0
        var total: UInt64 = 0
        withUnsafeBytes(of: memory.memoryHeaps) { raw in
            let heaps = raw.bindMemory(to: VkMemoryHeap.self)
            for i in 0..<Int(memory.memoryHeapCount) {
                total += heaps[i].size
                if heaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT.rawValue != 0 {
                    deviceLocal = max(deviceLocal, heaps[i].size)
                }
            }
        }
        return VulkanDeviceInfo(
            index: index, name: name, type: type, apiVersion: apiText, driverName: driverName, driverInfo: driverInfo,
            vendorID: props.vendorID, deviceLocalBytes: deviceLocal, totalBytes: total,
            hasComputeQueue: computeQueueFamily(device) != nil,
            maxStorageBufferRange: props.limits.maxStorageBufferRange,
            maxWorkgroupInvocations: props.limits.maxComputeWorkGroupInvocations,
            maxWorkgroupSizeX: props.limits.maxComputeWorkGroupSize.0,
            maxWorkgroupSizeY: props.limits.maxComputeWorkGroupSize.1)
    }

    static func computeQueueFamily(_ device: VkPhysicalDevice) -> UInt32? {
        var count: UInt32 = 0
        vkGetPhysicalDeviceQueueFamilyProperties(device, &count, nil)
        var families = [VkQueueFamilyProperties](repeating: VkQueueFamilyProperties(), count: Int(count))
        vkGetPhysicalDeviceQueueFamilyProperties(device, &count, &families)
        // Prefer a compute-only family (an async compute queue), else any with compute.
        let compute = VK_QUEUE_COMPUTE_BIT.rawValue
        let graphics = VK_QUEUE_GRAPHICS_BIT.rawValue
        if let i = families.firstIndex(where: { $0.queueFlags & compute != 0 && $0.queueFlags & graphics == 0 }) {
            return UInt32(i)
        }
        if let i = families.firstIndex(where: { $0.queueFlags & compute != 0 }) { return UInt32(i) }
        return nil
    }
}

/// A logical device with one compute queue, and everything made on it.
public final class VulkanDevice: @unchecked Sendable {
    public let instance: VulkanInstance
    public let info: VulkanDeviceInfo
    let physical: VkPhysicalDevice
    let handle: VkDevice
    let queue: VkQueue
    let commandPool: VkCommandPool
    let descriptorPool: VkDescriptorPool
    let fence: VkFence
    let memory: VkPhysicalDeviceMemoryProperties
    let limits: VkPhysicalDeviceLimits
    /// shaderFloat64: needed for exact arithmetic (`Arithmetic.exact`: correctly rounded
    /// divisions and square roots, double-precision row sums, as the reference computes).
    public let hasFloat64: Bool

    /// Opens device `index` (the order of `devices()`); nil picks the first discrete GPU, then
    /// integrated, then any device with a compute queue.
    public init(instance: VulkanInstance, index: Int? = nil) throws(InferenceError) {
        self.instance = instance
        let all = try instance.physicalDevices()
        guard !all.isEmpty else {
            throw InferenceError(
                .vulkanNoDevice,
                "the Vulkan loader reports no devices: install a driver (mesa-vulkan-drivers for a CPU device)")
        }
        let infos = all.enumerated().map { VulkanInstance.describe($1, index: $0) }
        let chosen: Int
        if let index {
            guard infos.indices.contains(index) else {
                throw InferenceError(
                    .vulkanNoDevice,
                    "no Vulkan device \(index); there are \(infos.count): "
                        + infos.map(\.summary).joined(separator: "; "))
            }
            chosen = index
        } else {
            let rank: (VulkanDeviceInfo) -> Int = {
                ["discrete GPU": 0, "integrated GPU": 1, "virtual GPU": 2, "CPU": 3][$0.type] ?? 4
            }
            guard let best = infos.filter(\.hasComputeQueue).min(by: { rank($0) < rank($1) }) else {
                throw InferenceError(.vulkanNoDevice, "no Vulkan device has a compute queue")
            }
            chosen = best.index
        }
        info = infos[chosen]
        let physicalDevice = all[chosen]
        physical = physicalDevice
        guard let family = VulkanInstance.computeQueueFamily(physicalDevice) else {
            throw InferenceError(.vulkanNoDevice, "device \(chosen) (\(info.name)) has no compute queue")
        }
        var supported = VkPhysicalDeviceFeatures()
        vkGetPhysicalDeviceFeatures(physicalDevice, &supported)
        hasFloat64 = supported.shaderFloat64 == VkBool32(VK_TRUE)
        var device: VkDevice?
        var priority: Float = 1
        let created: VkResult = withUnsafePointer(to: &priority) { priorityPointer in
            var queueInfo = VkDeviceQueueCreateInfo()
            queueInfo.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO
            queueInfo.queueFamilyIndex = family
            queueInfo.queueCount = 1
            queueInfo.pQueuePriorities = priorityPointer
            return withUnsafePointer(to: &queueInfo) { queuePointer in
                var enabled = VkPhysicalDeviceFeatures()
                enabled.shaderFloat64 = supported.shaderFloat64
                return withUnsafePointer(to: &enabled) { featuresPointer in
                    var deviceInfo = VkDeviceCreateInfo()
                    deviceInfo.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO
                    deviceInfo.queueCreateInfoCount = 1
                    deviceInfo.pQueueCreateInfos = queuePointer
                    deviceInfo.pEnabledFeatures = featuresPointer
                    return vkCreateDevice(physicalDevice, &deviceInfo, nil, &device)
                }
            }
        }
        try vkCheck(created, "vkCreateDevice")
        let dev = device!
        handle = dev
        var q: VkQueue?
        vkGetDeviceQueue(dev, family, 0, &q)
        queue = q!

        var poolInfo = VkCommandPoolCreateInfo()
        poolInfo.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO
        poolInfo.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT.rawValue
        poolInfo.queueFamilyIndex = family
        var pool: VkCommandPool?
        try vkCheck(vkCreateCommandPool(dev, &poolInfo, nil, &pool), "vkCreateCommandPool")
        commandPool = pool!

        var poolSize = VkDescriptorPoolSize(type: VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, descriptorCount: 32768)
        var descriptorInfo = VkDescriptorPoolCreateInfo()
        descriptorInfo.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO
        descriptorInfo.maxSets = 4096
        descriptorInfo.poolSizeCount = 1
        var dpool: VkDescriptorPool?
        let dresult = withUnsafePointer(to: &poolSize) { sizePointer in
            descriptorInfo.pPoolSizes = sizePointer
            return vkCreateDescriptorPool(dev, &descriptorInfo, nil, &dpool)
        }
        try vkCheck(dresult, "vkCreateDescriptorPool")
        descriptorPool = dpool!

        var fenceInfo = VkFenceCreateInfo()
        fenceInfo.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO
        var f: VkFence?
        try vkCheck(vkCreateFence(dev, &fenceInfo, nil, &f), "vkCreateFence")
        fence = f!

        var mem = VkPhysicalDeviceMemoryProperties()
        vkGetPhysicalDeviceMemoryProperties(physical, &mem)
        memory = mem
        var props = VkPhysicalDeviceProperties()
        vkGetPhysicalDeviceProperties(physical, &props)
        limits = props.limits
    }

    deinit {
        vkDeviceWaitIdle(handle)
        vkDestroyFence(handle, fence, nil)
        vkDestroyDescriptorPool(handle, descriptorPool, nil)
        vkDestroyCommandPool(handle, commandPool, nil)
        vkDestroyDevice(handle, nil)
    }

    /// Largest single storage buffer a shader may bind.
    public var maxBufferBytes: Int { Int(limits.maxStorageBufferRange) }

    func memoryType(bits: UInt32, required: UInt32, preferred: UInt32 = 0) -> UInt32? {
        let types = withUnsafeBytes(of: memory.memoryTypes) {
            Array($0.bindMemory(to: VkMemoryType.self).prefix(Int(memory.memoryTypeCount)))
        }
        let candidates = types.indices.filter {
            bits & (1 << UInt32($0)) != 0 && types[$0].propertyFlags & required == required
        }
        return candidates.first { types[$0].propertyFlags & preferred == preferred }.map(UInt32.init)
            ?? candidates.first.map(UInt32.init)
    }

    func memoryTypeFlags(_ index: UInt32) -> UInt32 {
        withUnsafeBytes(of: memory.memoryTypes) { $0.bindMemory(to: VkMemoryType.self)[Int(index)].propertyFlags }
    }
}
